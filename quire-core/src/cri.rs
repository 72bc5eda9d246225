//! CRI log files (the Kubernetes container log format, SPEC §5.2): one file
//! per `sh` call, lines `<RFC3339Nano UTC> <stdout|stderr> <F|P> <content>`.
//! The writer turns raw output chunks into lines as they arrive; the reader
//! parses them back for the CLI and the web UI. What goes into a log (and
//! redaction) is the runtime's business, not this module's.

use std::fmt;
use std::io::{self, Write};

/// Longer lines are split into `P` chunks of this size, ending with `F`.
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// `F`: the line is complete; `P`: a partial chunk of a longer line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    Full,
    Partial,
}

/// One parsed log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub timestamp: String,
    pub stream: Stream,
    pub tag: Tag,
    pub content: String,
}

/// The current time as CRI stamps it: RFC 3339, UTC, nanoseconds.
pub fn timestamp_now() -> String {
    format!("{:.9}", jiff::Timestamp::now())
}

/// What a writer masks before anything reaches the file (secrets). Masking
/// happens before a long line is cut into chunks, and a chunk never ends
/// inside a masked value, so a value straddling a chunk boundary is masked
/// too.
pub trait Mask {
    /// `text` with every masked value replaced.
    fn mask(&self, text: &str) -> String;
    /// The byte spans of masked values in raw output.
    fn spans(&self, raw: &[u8]) -> Vec<(usize, usize)>;
    /// The length of the longest masked value, in bytes.
    fn longest(&self) -> usize;
}

/// Masks nothing.
pub struct NoMask;

impl Mask for NoMask {
    fn mask(&self, text: &str) -> String {
        text.to_string()
    }
    fn spans(&self, _raw: &[u8]) -> Vec<(usize, usize)> {
        Vec::new()
    }
    fn longest(&self) -> usize {
        0
    }
}

/// Writes CRI lines to `out`, buffering each stream's unfinished line until
/// its newline arrives (or it grows past [`MAX_LINE`], when a `P` chunk is
/// cut on a character boundary). Complete lines are written and flushed at
/// once so a `tail -f` follows along. With a cap, output past it is
/// discarded after one line saying so.
pub struct Writer<W: Write> {
    out: W,
    pending: [Vec<u8>; 2],
    cap: Option<u64>,
    written: u64,
    truncated: bool,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Self {
        Writer { out, pending: [Vec::new(), Vec::new()], cap: None, written: 0, truncated: false }
    }

    /// A writer that keeps at most `cap` bytes of output.
    pub fn with_cap(out: W, cap: u64) -> Self {
        Writer { cap: Some(cap), ..Writer::new(out) }
    }

    /// Whether output was discarded because of the cap.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// Feeds a chunk of raw output from `stream`.
    pub fn write(&mut self, stream: Stream, mut data: &[u8], mask: &dyn Mask) -> io::Result<()> {
        let mut wrote = false;
        while !data.is_empty() {
            match data.iter().position(|&b| b == b'\n') {
                Some(newline) => {
                    self.pending[stream as usize].extend_from_slice(&data[..newline]);
                    data = &data[newline + 1..];
                    let line = std::mem::take(&mut self.pending[stream as usize]);
                    self.emit_line(stream, &line, mask)?;
                }
                None => {
                    self.pending[stream as usize].extend_from_slice(data);
                    data = &[];
                    self.emit_partials(stream, mask)?;
                }
            }
            wrote = true;
        }
        if wrote {
            self.out.flush()?;
        }
        Ok(())
    }

    /// Writes a complete line of text from quire-ci itself, e.g. why a
    /// command was killed. Such lines are written even past the cap.
    pub fn write_line(&mut self, stream: Stream, text: &str, mask: &dyn Mask) -> io::Result<()> {
        let masked = mask.mask(text);
        for line in masked.lines() {
            self.emit(stream, Tag::Full, line)?;
        }
        self.out.flush()
    }

    /// Writes out unfinished lines (a last line without a newline is `F`).
    pub fn finish(&mut self, mask: &dyn Mask) -> io::Result<()> {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let line = std::mem::take(&mut self.pending[stream as usize]);
            if !line.is_empty() {
                self.emit_line(stream, &line, mask)?;
            }
        }
        self.out.flush()
    }

    /// A whole line: masked first, then cut into chunks on character
    /// boundaries.
    fn emit_line(&mut self, stream: Stream, line: &[u8], mask: &dyn Mask) -> io::Result<()> {
        let text = String::from_utf8_lossy(line);
        let text = mask.mask(text.strip_suffix('\r').unwrap_or(&text));
        let mut rest = text.as_str();
        while rest.len() > MAX_LINE {
            let cut = floor_char_boundary(rest.as_bytes(), MAX_LINE);
            self.emit_output(stream, Tag::Partial, &rest[..cut])?;
            rest = &rest[cut..];
        }
        self.emit_output(stream, Tag::Full, rest)
    }

    /// Cuts `P` chunks off a line that has grown long without a newline,
    /// keeping back enough to finish any masked value that may be arriving.
    fn emit_partials(&mut self, stream: Stream, mask: &dyn Mask) -> io::Result<()> {
        let hold = mask.longest().saturating_sub(1);
        while self.pending[stream as usize].len() >= MAX_LINE + hold {
            let pending = &self.pending[stream as usize];
            let mut cut = MAX_LINE.min(pending.len() - hold);
            if let Some(&(_, end)) =
                mask.spans(pending).iter().find(|&&(start, end)| start < cut && cut < end)
            {
                cut = end;
            }
            let cut = floor_char_boundary(pending, cut).max(1);
            let chunk: Vec<u8> = self.pending[stream as usize].drain(..cut).collect();
            let text = mask.mask(&String::from_utf8_lossy(&chunk));
            self.emit_output(stream, Tag::Partial, &text)?;
        }
        Ok(())
    }

    /// Writes command output while the file stays within the cap.
    fn emit_output(&mut self, stream: Stream, tag: Tag, text: &str) -> io::Result<()> {
        if self.truncated {
            return Ok(());
        }
        let line = format_line(stream, tag, text);
        if self.cap.is_some_and(|cap| self.written + line.len() as u64 > cap) {
            self.truncated = true;
            let note = format!(
                "quire-ci: log truncated: it reached its limit of {} MiB; the rest of this command's output was discarded",
                self.cap.unwrap_or_default() / (1024 * 1024)
            );
            return self.emit(Stream::Stderr, Tag::Full, &note);
        }
        self.written += line.len() as u64;
        self.out.write_all(line.as_bytes())
    }

    fn emit(&mut self, stream: Stream, tag: Tag, text: &str) -> io::Result<()> {
        self.out.write_all(format_line(stream, tag, text).as_bytes())
    }
}

/// One line of a CRI log file, newline included.
fn format_line(stream: Stream, tag: Tag, text: &str) -> String {
    let tag = match tag {
        Tag::Full => 'F',
        Tag::Partial => 'P',
    };
    format!("{} {} {} {}\n", timestamp_now(), stream.as_str(), tag, text)
}

/// The largest index at most `at` that does not fall inside a UTF-8
/// character of `bytes` (0 if none).
fn floor_char_boundary(bytes: &[u8], at: usize) -> usize {
    let mut cut = at.min(bytes.len());
    while cut > 0 && cut < bytes.len() && (bytes[cut] & 0b1100_0000) == 0b1000_0000 {
        cut -= 1;
    }
    cut
}

/// Why a log line could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a CRI log line: {0:?}")]
pub struct ParseError(pub String);

impl Line {
    pub fn parse(line: &str) -> Result<Line, ParseError> {
        let bad = || ParseError(line.chars().take(80).collect());
        let mut parts = line.splitn(4, ' ');
        let timestamp = parts.next().filter(|t| t.ends_with('Z')).ok_or_else(bad)?;
        let stream = match parts.next() {
            Some("stdout") => Stream::Stdout,
            Some("stderr") => Stream::Stderr,
            _ => return Err(bad()),
        };
        let tag = match parts.next() {
            Some("F") => Tag::Full,
            Some("P") => Tag::Partial,
            _ => return Err(bad()),
        };
        let content = parts.next().unwrap_or_default().trim_end_matches('\n');
        Ok(Line { timestamp: timestamp.to_string(), stream, tag, content: content.to_string() })
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.tag {
            Tag::Full => 'F',
            Tag::Partial => 'P',
        };
        write!(f, "{} {} {} {}", self.timestamp, self.stream.as_str(), tag, self.content)
    }
}

/// A joined line holds at most this much; past it, what is there comes out
/// as a `P` line of its own, so a reader's memory is bounded whatever the
/// writer did.
pub const MAX_JOINED: usize = 1024 * 1024;

/// Joins `P` chunks back into whole lines, per stream, as a log is read
/// line by line. A line comes out when it is complete, so a stdout line
/// split around a stderr line comes out after it. Unparseable lines are
/// passed through as stdout text rather than dropped.
#[derive(Debug, Default)]
pub struct Joiner {
    open: [Option<Line>; 2],
}

impl Joiner {
    /// Takes one raw line of the file; gives back the line it completes.
    pub fn push(&mut self, raw: &str) -> Option<Line> {
        let line = Line::parse(raw).unwrap_or_else(|_| Line {
            timestamp: String::new(),
            stream: Stream::Stdout,
            tag: Tag::Full,
            content: raw.into(),
        });
        let slot = &mut self.open[line.stream as usize];
        let joined = match slot.take() {
            Some(mut open) => {
                open.content.push_str(&line.content);
                open.tag = line.tag;
                open
            }
            None => line,
        };
        if joined.tag == Tag::Partial && joined.content.len() < MAX_JOINED {
            *slot = Some(joined);
            return None;
        }
        Some(joined)
    }

    /// What is left open at the end of the file.
    pub fn finish(self) -> impl Iterator<Item = Line> {
        self.open.into_iter().flatten()
    }
}

/// A whole log's lines, joined (see [`Joiner`]).
pub fn read_lines(text: &str) -> Vec<Line> {
    let mut joiner = Joiner::default();
    let mut out: Vec<Line> = text.lines().filter_map(|raw| joiner.push(raw)).collect();
    out.extend(joiner.finish());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(feed: &[(Stream, &[u8])]) -> Vec<Line> {
        written_masked(feed, &NoMask)
    }

    fn written_masked(feed: &[(Stream, &[u8])], mask: &dyn Mask) -> Vec<Line> {
        let mut writer = Writer::new(Vec::new());
        for (stream, data) in feed {
            writer.write(*stream, data, mask).unwrap();
        }
        writer.finish(mask).unwrap();
        String::from_utf8(writer.out).unwrap().lines().map(|l| Line::parse(l).unwrap()).collect()
    }

    /// Masks one value, as the runtime's redactor does.
    struct One(&'static str);

    impl Mask for One {
        fn mask(&self, text: &str) -> String {
            text.replace(self.0, "***")
        }
        fn spans(&self, raw: &[u8]) -> Vec<(usize, usize)> {
            let needle = self.0.as_bytes();
            raw.windows(needle.len())
                .enumerate()
                .filter(|(_, w)| *w == needle)
                .map(|(i, _)| (i, i + needle.len()))
                .collect()
        }
        fn longest(&self) -> usize {
            self.0.len()
        }
    }

    fn joined(lines: &[Line]) -> String {
        read_lines(&lines.iter().map(|l| format!("{l}\n")).collect::<String>())
            .into_iter()
            .map(|l| l.content)
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn a_secret_straddling_the_chunk_boundary_is_masked() {
        let secret = "hunter2-secret";
        for offset in 0..secret.len() {
            let mut line = "x".repeat(MAX_LINE - offset).into_bytes();
            line.extend_from_slice(secret.as_bytes());
            line.extend_from_slice(b" tail");
            // Fed in small pieces, as a pipe delivers it.
            let feed: Vec<(Stream, &[u8])> = line.chunks(1000).map(|c| (Stream::Stdout, c)).collect();
            let lines = written_masked(&feed, &One(secret));
            let text = joined(&lines);
            assert!(!text.contains("hunter2"), "offset {offset}: the secret leaked");
            assert!(text.ends_with("*** tail"), "offset {offset}");
        }
    }

    #[test]
    fn chunks_are_cut_on_character_boundaries() {
        let mut line = "x".repeat(MAX_LINE - 1).into_bytes();
        line.extend_from_slice("é€😀 end".as_bytes());
        let feed: Vec<(Stream, &[u8])> = line.chunks(777).map(|c| (Stream::Stdout, c)).collect();
        let lines = written_masked(&feed, &NoMask);
        assert!(lines.len() >= 2);
        assert!(lines.iter().all(|l| !l.content.contains('\u{fffd}')), "no character was cut in two");
        assert!(joined(&lines).ends_with("é€😀 end"));
    }

    #[test]
    fn a_capped_log_says_it_was_truncated_and_keeps_nothing_after() {
        let line_bytes = format_line(Stream::Stdout, Tag::Full, "0123456789").len() as u64;
        let mut writer = Writer::with_cap(Vec::new(), 10 * line_bytes);
        for _ in 0..50 {
            writer.write(Stream::Stdout, b"0123456789\n", &NoMask).unwrap();
        }
        writer.write_line(Stream::Stderr, "quire-ci: command killed", &NoMask).unwrap();
        writer.finish(&NoMask).unwrap();
        assert!(writer.truncated());
        let text = String::from_utf8(writer.out).unwrap();
        let lines: Vec<Line> = text.lines().map(|l| Line::parse(l).unwrap()).collect();
        assert_eq!(lines.iter().filter(|l| l.content == "0123456789").count(), 10);
        assert!(lines[10].content.contains("log truncated"), "{text}");
        assert_eq!(
            lines.last().unwrap().content,
            "quire-ci: command killed",
            "quire-ci's own lines still go in"
        );
    }

    #[test]
    fn timestamps_are_rfc3339_nanoseconds_utc() {
        let ts = timestamp_now();
        assert_eq!(ts.len(), "2026-11-22T10:00:00.123456789Z".len(), "{ts}");
        assert!(ts.ends_with('Z'));
        assert_eq!(&ts[19..20], ".");
    }

    #[test]
    fn lines_split_on_newlines_across_chunks() {
        let lines =
            written(&[(Stream::Stdout, b"hel"), (Stream::Stdout, b"lo\nwor"), (Stream::Stdout, b"ld\n")]);
        let content: Vec<_> = lines.iter().map(|l| (l.tag, l.content.as_str())).collect();
        assert_eq!(content, [(Tag::Full, "hello"), (Tag::Full, "world")]);
    }

    #[test]
    fn last_line_without_newline_is_full() {
        let lines = written(&[(Stream::Stdout, b"done")]);
        assert_eq!(lines.len(), 1);
        assert_eq!((lines[0].tag, lines[0].content.as_str()), (Tag::Full, "done"));
    }

    #[test]
    fn long_lines_become_partial_chunks() {
        let long = vec![b'x'; MAX_LINE * 2 + 10];
        let mut data = long.clone();
        data.push(b'\n');
        let lines = written(&[(Stream::Stdout, &data)]);
        let tags: Vec<_> = lines.iter().map(|l| (l.tag, l.content.len())).collect();
        assert_eq!(tags, [(Tag::Partial, MAX_LINE), (Tag::Partial, MAX_LINE), (Tag::Full, 10)]);
        let joined = read_lines(&lines.iter().map(|l| format!("{l}\n")).collect::<String>());
        assert_eq!(joined.len(), 1);
        assert_eq!(joined[0].content.len(), long.len());
    }

    #[test]
    fn streams_keep_their_own_partial_lines() {
        let lines = written(&[
            (Stream::Stdout, b"out-a"),
            (Stream::Stderr, b"err-1\n"),
            (Stream::Stdout, b"-b\n"),
            (Stream::Stderr, b"err-2\n"),
        ]);
        let seen: Vec<_> = lines.iter().map(|l| (l.stream, l.content.as_str())).collect();
        assert_eq!(seen, [(Stream::Stderr, "err-1"), (Stream::Stdout, "out-a-b"), (Stream::Stderr, "err-2")]);
    }

    #[test]
    fn a_line_of_endless_partial_chunks_comes_out_in_bounded_pieces() {
        let chunk = format!("2026-11-22T10:00:00.000000001Z stdout P {}", "p".repeat(MAX_LINE));
        let mut joiner = Joiner::default();
        let mut longest = 0;
        let mut total = 0;
        for _ in 0..200 {
            if let Some(line) = joiner.push(&chunk) {
                longest = longest.max(line.content.len());
                total += line.content.len();
            }
        }
        total += joiner.finish().map(|l| l.content.len()).sum::<usize>();
        assert!(longest <= MAX_JOINED + MAX_LINE, "{longest}");
        assert_eq!(total, 200 * MAX_LINE, "nothing is lost");
    }

    #[test]
    fn empty_lines_are_kept() {
        let lines = written(&[(Stream::Stdout, b"a\n\nb\n")]);
        assert_eq!(lines.iter().map(|l| l.content.as_str()).collect::<Vec<_>>(), ["a", "", "b"]);
    }

    #[test]
    fn redaction_applies_to_content() {
        let mut writer = Writer::new(Vec::new());
        writer.write(Stream::Stdout, b"token=hunter2\n", &One("hunter2")).unwrap();
        let text = String::from_utf8(writer.out).unwrap();
        assert!(text.ends_with(" stdout F token=***\n"), "{text}");
    }

    #[test]
    fn parse_rejects_garbage_and_keeps_spaces() {
        assert!(Line::parse("hello").is_err());
        assert!(Line::parse("2026-11-22T10:00:00.1Z stdin F x").is_err());
        let line = Line::parse("2026-11-22T10:00:00.123456789Z stderr F  two  spaces ").unwrap();
        assert_eq!(line.stream, Stream::Stderr);
        assert_eq!(line.content, " two  spaces ");
    }
}
