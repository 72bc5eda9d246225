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

/// Writes CRI lines to `out`, buffering each stream's unfinished line until
/// its newline arrives (or it reaches [`MAX_LINE`]). Complete lines are
/// written and flushed at once so a `tail -f` follows along.
pub struct Writer<W: Write> {
    out: W,
    pending: [Vec<u8>; 2],
}

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Self {
        Writer { out, pending: [Vec::new(), Vec::new()] }
    }

    /// Feeds a chunk of raw output from `stream`; `redact` is applied to
    /// each line (or chunk) before it is written.
    pub fn write(
        &mut self,
        stream: Stream,
        mut data: &[u8],
        redact: &dyn Fn(&str) -> String,
    ) -> io::Result<()> {
        let mut wrote = false;
        while !data.is_empty() {
            let pending = &mut self.pending[stream as usize];
            match data.iter().position(|&b| b == b'\n') {
                Some(newline) => {
                    pending.extend_from_slice(&data[..newline]);
                    data = &data[newline + 1..];
                    let line = std::mem::take(pending);
                    self.emit_line(stream, &line, redact)?;
                }
                None => {
                    pending.extend_from_slice(data);
                    data = &[];
                    while self.pending[stream as usize].len() >= MAX_LINE {
                        let rest = self.pending[stream as usize].split_off(MAX_LINE);
                        let chunk = std::mem::replace(&mut self.pending[stream as usize], rest);
                        self.emit(stream, Tag::Partial, &chunk, redact)?;
                    }
                }
            }
            wrote = true;
        }
        if wrote {
            self.out.flush()?;
        }
        Ok(())
    }

    /// Writes a complete line of text, e.g. a message from quire-ci itself.
    pub fn write_line(&mut self, stream: Stream, text: &str) -> io::Result<()> {
        self.emit_line(stream, text.as_bytes(), &|s| s.to_string())?;
        self.out.flush()
    }

    /// Writes out unfinished lines (a last line without a newline is `F`).
    pub fn finish(&mut self, redact: &dyn Fn(&str) -> String) -> io::Result<()> {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let line = std::mem::take(&mut self.pending[stream as usize]);
            if !line.is_empty() {
                self.emit(stream, Tag::Full, &line, redact)?;
            }
        }
        self.out.flush()
    }

    fn emit_line(&mut self, stream: Stream, line: &[u8], redact: &dyn Fn(&str) -> String) -> io::Result<()> {
        let mut chunks = line.chunks(MAX_LINE).peekable();
        if chunks.peek().is_none() {
            return self.emit(stream, Tag::Full, b"", redact);
        }
        while let Some(chunk) = chunks.next() {
            let tag = if chunks.peek().is_some() { Tag::Partial } else { Tag::Full };
            self.emit(stream, tag, chunk, redact)?;
        }
        Ok(())
    }

    fn emit(
        &mut self,
        stream: Stream,
        tag: Tag,
        content: &[u8],
        redact: &dyn Fn(&str) -> String,
    ) -> io::Result<()> {
        let text = String::from_utf8_lossy(content);
        let text = text.strip_suffix('\r').unwrap_or(&text);
        let tag = match tag {
            Tag::Full => 'F',
            Tag::Partial => 'P',
        };
        writeln!(self.out, "{} {} {} {}", timestamp_now(), stream.as_str(), tag, redact(text))
    }
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

/// Joins `P` chunks back into whole lines, per stream, in file order.
/// Unparseable lines are passed through as stdout text rather than dropped.
pub fn read_lines(text: &str) -> Vec<Line> {
    let mut out: Vec<Line> = Vec::new();
    let mut open: [Option<usize>; 2] = [None, None];
    for raw in text.lines() {
        let line = match Line::parse(raw) {
            Ok(line) => line,
            Err(_) => {
                Line { timestamp: String::new(), stream: Stream::Stdout, tag: Tag::Full, content: raw.into() }
            }
        };
        let slot = line.stream as usize;
        match open[slot] {
            Some(index) => {
                out[index].content.push_str(&line.content);
                out[index].tag = line.tag;
            }
            None => out.push(line.clone()),
        }
        let index = open[slot].unwrap_or(out.len() - 1);
        open[slot] = (line.tag == Tag::Partial).then_some(index);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(s: &str) -> String {
        s.to_string()
    }

    fn written(feed: &[(Stream, &[u8])]) -> Vec<Line> {
        let mut writer = Writer::new(Vec::new());
        for (stream, data) in feed {
            writer.write(*stream, data, &plain).unwrap();
        }
        writer.finish(&plain).unwrap();
        String::from_utf8(writer.out).unwrap().lines().map(|l| Line::parse(l).unwrap()).collect()
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
    fn empty_lines_are_kept() {
        let lines = written(&[(Stream::Stdout, b"a\n\nb\n")]);
        assert_eq!(lines.iter().map(|l| l.content.as_str()).collect::<Vec<_>>(), ["a", "", "b"]);
    }

    #[test]
    fn redaction_applies_to_content() {
        let mut writer = Writer::new(Vec::new());
        writer.write(Stream::Stdout, b"token=hunter2\n", &|s: &str| s.replace("hunter2", "***")).unwrap();
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
