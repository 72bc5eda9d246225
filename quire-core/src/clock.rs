//! Time as Quire records and shows it: Unix milliseconds from the wall
//! clock (what events, rows and logs are stamped with), and the one way a
//! span of time is written for people, in progress lines, the CLI and the
//! web pages alike. A leaf with no other dependency.

/// The current wall clock in Unix milliseconds.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// A span of milliseconds for people: `420ms`, `4s`, `12.3s`, `2m05s`.
/// Negative spans (clock steps) show as zero.
pub fn format_duration_ms(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let tenths = (ms + 50) / 100;
        if tenths % 10 == 0 {
            format!("{}s", tenths / 10)
        } else {
            format!("{}.{}s", tenths / 10, tenths % 10)
        }
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(format_duration_ms(-5), "0ms");
        assert_eq!(format_duration_ms(12), "12ms");
        assert_eq!(format_duration_ms(999), "999ms");
        assert_eq!(format_duration_ms(1000), "1s");
        assert_eq!(format_duration_ms(1500), "1.5s");
        assert_eq!(format_duration_ms(4000), "4s");
        assert_eq!(format_duration_ms(12_345), "12.3s");
        assert_eq!(format_duration_ms(59_990), "60s");
        assert_eq!(format_duration_ms(61_000), "1m01s");
        assert_eq!(format_duration_ms(125_000), "2m05s");
    }
}
