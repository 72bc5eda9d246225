//! `/runs/{id}/logs/{job}/{n}`: one log as plain text, `<time> <stream>
//! <text>` a line, streamed from disk a chunk at a time on the blocking
//! pool, so a download costs [`CHUNK`] (plus one joined line, bounded by
//! `cri::MAX_JOINED`) of memory whatever the log's size. `n` = 0 is the
//! job's own log.

use std::fs::File;
use std::io::Read;

use actix_web::{get, web, HttpRequest, HttpResponse};
use bytes::Bytes;
use quire_core::cri::{self, Joiner};
use quire_core::id::{JobId, RunId};
use quire_core::run_dir::LogFile;

use super::layout::{error_page, not_found_page};
use crate::http::{require_user, with_db, ApiError, AppState};
use crate::runs;

/// How much of the file one step reads.
const CHUNK: usize = 256 * 1024;

#[get("/runs/{id}/logs/{job}/{n}")]
pub async fn raw_log(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<(String, String, u32)>,
) -> HttpResponse {
    if let Err(e) = require_user(&state, &request) {
        return error_page(e);
    }
    let (id, job, n) = path.into_inner();
    let (Ok(id), Ok(job)) = (id.parse::<RunId>(), JobId::new(job)) else {
        return not_found_page().await;
    };
    let root = state.root.clone();
    let run = match with_db(&state, move |conn| runs::get(conn, id).map_err(ApiError::internal)).await {
        Ok(Some(run)) => run,
        Ok(None) => return not_found_page().await,
        Err(e) => return error_page(e),
    };
    let file = if n == 0 { LogFile::Job } else { LogFile::Command(n) };
    let dir = root.run_dir(&run.repo, id);
    let path = dir.log(&job, file);
    match web::block(move || dir.open(&path)).await {
        Ok(Ok(file)) => HttpResponse::Ok()
            .content_type("text/plain; charset=utf-8")
            // A log is whatever a pipeline printed: never let a browser
            // guess it is HTML.
            .insert_header(("X-Content-Type-Options", "nosniff"))
            .streaming(futures_util::stream::unfold(Some(Reader::new(file)), next_chunk)),
        Ok(Err(_)) => not_found_page().await,
        Err(e) => error_page(ApiError::internal(e)),
    }
}

/// One step of the stream: the next chunk's text, read off the async
/// threads; `None` once the file is done.
async fn next_chunk(reader: Option<Reader>) -> Option<(Result<Bytes, actix_web::Error>, Option<Reader>)> {
    let mut reader = reader?;
    match web::block(move || {
        let text = reader.step();
        (reader, text)
    })
    .await
    {
        Ok((reader, Ok(Some(text)))) => Some((Ok(text), Some(reader))),
        Ok((_, Ok(None))) => None,
        Ok((_, Err(e))) => Some((Err(actix_web::error::ErrorInternalServerError(e)), None)),
        Err(e) => Some((Err(actix_web::error::ErrorInternalServerError(e)), None)),
    }
}

/// A log file being turned into text, a chunk at a time.
struct Reader {
    file: File,
    /// The start of a line whose end is in the next chunk.
    carry: Vec<u8>,
    joiner: Joiner,
    done: bool,
}

impl Reader {
    fn new(file: File) -> Reader {
        Reader { file, carry: Vec::new(), joiner: Joiner::default(), done: false }
    }

    /// The next piece of text; `None` at the end. A step never returns an
    /// empty piece (a chunk of nothing but partial lines reads on).
    fn step(&mut self) -> std::io::Result<Option<Bytes>> {
        let mut out = Vec::new();
        while out.is_empty() && !self.done {
            let mut buf = vec![0; CHUNK];
            let n = self.file.read(&mut buf)?;
            if n == 0 {
                self.done = true;
                let rest = std::mem::take(&mut self.carry);
                if !rest.is_empty() {
                    self.line(&rest, &mut out);
                }
                for line in std::mem::take(&mut self.joiner).finish() {
                    render(&line, &mut out);
                }
                break;
            }
            self.carry.extend_from_slice(&buf[..n]);
            let Some(end) = self.carry.iter().rposition(|&b| b == b'\n') else {
                // No newline in a line this long: quire-ci never writes one
                // (it cuts lines into `P` chunks), so pass it on as it is.
                if self.carry.len() > cri::MAX_JOINED {
                    let rest = std::mem::take(&mut self.carry);
                    self.line(&rest, &mut out);
                }
                continue;
            };
            let rest = self.carry.split_off(end + 1);
            let complete = std::mem::replace(&mut self.carry, rest);
            for raw in complete.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                self.line(raw, &mut out);
            }
        }
        Ok((!out.is_empty()).then(|| Bytes::from(out)))
    }

    fn line(&mut self, raw: &[u8], out: &mut Vec<u8>) {
        if let Some(line) = self.joiner.push(&String::from_utf8_lossy(raw)) {
            render(&line, out);
        }
    }
}

fn render(line: &cri::Line, out: &mut Vec<u8>) {
    out.extend_from_slice(line.timestamp.as_bytes());
    out.push(b' ');
    out.extend_from_slice(line.stream.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(line.content.as_bytes());
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn all_of(file: File) -> String {
        let mut reader = Reader::new(file);
        let mut text = Vec::new();
        let mut steps = 0;
        while let Some(piece) = reader.step().unwrap() {
            assert!(!piece.is_empty());
            text.extend_from_slice(&piece);
            steps += 1;
        }
        assert!(steps >= 1);
        String::from_utf8(text).unwrap()
    }

    #[test]
    fn a_line_without_end_streams_in_bounded_pieces_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sh-1.log");
        // No newline anywhere: what a writer other than quire-ci could leave.
        std::fs::write(&path, "z".repeat(3 * cri::MAX_JOINED)).unwrap();
        let mut reader = Reader::new(File::open(&path).unwrap());
        let mut total = 0;
        while let Some(piece) = reader.step().unwrap() {
            assert!(piece.len() <= cri::MAX_JOINED + 2 * CHUNK + 64, "a piece of {} bytes", piece.len());
            total += piece.iter().filter(|&&b| b == b'z').count();
        }
        assert_eq!(total, 3 * cri::MAX_JOINED);
    }

    #[test]
    fn a_log_streams_as_the_whole_read_would_render_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sh-1.log");
        let mut file = File::create(&path).unwrap();
        for i in 0..20_000 {
            writeln!(file, "2026-11-22T10:00:00.000000001Z stdout F line {i}").unwrap();
        }
        writeln!(file, "2026-11-22T10:00:01.000000001Z stderr P half-").unwrap();
        write!(file, "2026-11-22T10:00:01.000000002Z stderr F done").unwrap();
        drop(file);
        let text = all_of(File::open(&path).unwrap());
        let expected: String = cri::read_lines(&std::fs::read_to_string(&path).unwrap())
            .iter()
            .map(|l| format!("{} {} {}\n", l.timestamp, l.stream.as_str(), l.content))
            .collect();
        assert_eq!(text, expected);
        assert!(text.ends_with("stderr half-done\n"));
    }
}
