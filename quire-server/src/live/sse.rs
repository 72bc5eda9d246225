//! Server-Sent Events framing: one message with its `event:` name, its
//! optional `id:` and its data lines, and the keep-alive comment. Nothing
//! else: what the events mean is the feed's and the page script's.

use bytes::Bytes;

/// One SSE message; `data` may span lines.
pub fn message(id: Option<&str>, event: &str, data: &str) -> Bytes {
    let mut text = String::with_capacity(data.len() + 48);
    if let Some(id) = id {
        text.push_str("id: ");
        text.push_str(id);
        text.push('\n');
    }
    text.push_str("event: ");
    text.push_str(event);
    text.push('\n');
    for line in data.lines() {
        text.push_str("data: ");
        text.push_str(line);
        text.push('\n');
    }
    text.push('\n');
    Bytes::from(text)
}

/// A comment line: keeps proxies and browsers from timing out an idle
/// stream, and is ignored by `EventSource`.
pub fn keep_alive() -> Bytes {
    Bytes::from_static(b": keep-alive\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_sse_framed() {
        assert_eq!(message(None, "end", "{}"), Bytes::from("event: end\ndata: {}\n\n"));
        assert_eq!(
            message(Some("7-3"), "log", "a\nb"),
            Bytes::from("id: 7-3\nevent: log\ndata: a\ndata: b\n\n")
        );
    }
}
