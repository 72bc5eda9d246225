//! ANSI colour in log lines: turns the SGR escape codes a tool writes
//! (`ESC[1;31m` and kin) into `<span style="…">` runs of escaped text, and
//! drops every other escape or control sequence (cursor moves and line
//! clears, OSC titles and links, DCS and the other string sequences, a
//! lone ESC, and every C0 or C1 control but TAB), so what it renders never
//! holds a control byte. A style is built only from this module's own
//! words, its colour tables and numbers it parsed; no input text ever goes
//! into an attribute. It owns the parsing and the styles; it does not own
//! where lines come from, how they are cut or joined, or the page around
//! them (`run_page`). One pass over the line, O(len) work whatever the
//! input: every step consumes at least one byte and looks at each byte a
//! bounded number of times.

use std::ops::RangeInclusive;

use maud::{html, Markup};

const ESC: u8 = 0x1b;
const BEL: u8 = 0x07;

/// A colour, written as `#rrggbb`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rgb(u8, u8, u8);

impl Rgb {
    fn hex(self) -> String {
        format!("#{:02x}{:02x}{:02x}", self.0, self.1, self.2)
    }
}

/// The 16 standard colours: 30–37 / 40–47, then the bright 90–97 /
/// 100–107. VS Code's terminal palette, readable on the page's dark log
/// background.
const STANDARD: [Rgb; 16] = [
    Rgb(0x00, 0x00, 0x00), // black
    Rgb(0xcd, 0x31, 0x31), // red
    Rgb(0x0d, 0xbc, 0x79), // green
    Rgb(0xe5, 0xe5, 0x10), // yellow
    Rgb(0x24, 0x72, 0xc8), // blue
    Rgb(0xbc, 0x3f, 0xbc), // magenta
    Rgb(0x11, 0xa8, 0xcd), // cyan
    Rgb(0xe5, 0xe5, 0xe5), // white
    Rgb(0x66, 0x66, 0x66), // bright black
    Rgb(0xf1, 0x4c, 0x4c), // bright red
    Rgb(0x23, 0xd1, 0x8b), // bright green
    Rgb(0xf5, 0xf5, 0x43), // bright yellow
    Rgb(0x3b, 0x8e, 0xea), // bright blue
    Rgb(0xd6, 0x70, 0xd6), // bright magenta
    Rgb(0x29, 0xb8, 0xdb), // bright cyan
    Rgb(0xff, 0xff, 0xff), // bright white
];

/// Entry `n` of the xterm 256-colour palette: the 16 standard colours, a
/// 6×6×6 colour cube, then 24 greys from dark to light.
fn palette(n: u8) -> Rgb {
    const LEVELS: [u8; 6] = [0, 95, 135, 175, 215, 255];
    match n {
        0..=15 => STANDARD[usize::from(n)],
        16..=231 => {
            let i = usize::from(n - 16);
            Rgb(LEVELS[i / 36], LEVELS[i / 6 % 6], LEVELS[i % 6])
        }
        _ => {
            let grey = 8 + (n - 232) * 10;
            Rgb(grey, grey, grey)
        }
    }
}

/// Standard colour `n` (0–15), if there is one.
fn standard(n: u32) -> Option<Rgb> {
    STANDARD.get(usize::try_from(n).ok()?).copied()
}

/// A truecolour colour, if each part fits in a byte.
fn rgb(r: u32, g: u32, b: u32) -> Option<Rgb> {
    Some(Rgb(u8::try_from(r).ok()?, u8::try_from(g).ok()?, u8::try_from(b).ok()?))
}

/// How the text after the last SGR sequence looks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Style {
    fg: Option<Rgb>,
    bg: Option<Rgb>,
    bold: bool,
    dim: bool,
    italic: bool,
    underline: bool,
}

impl Style {
    /// The inline CSS for this style, `None` for plain text.
    fn css(&self) -> Option<String> {
        let mut parts = Vec::new();
        if let Some(fg) = self.fg {
            parts.push(format!("color:{}", fg.hex()));
        }
        if let Some(bg) = self.bg {
            parts.push(format!("background-color:{}", bg.hex()));
        }
        for (on, css) in [
            (self.bold, "font-weight:bold"),
            (self.dim, "opacity:0.7"),
            (self.italic, "font-style:italic"),
            (self.underline, "text-decoration:underline"),
        ] {
            if on {
                parts.push(css.to_string());
            }
        }
        (!parts.is_empty()).then(|| parts.join(";"))
    }
}

/// Text that looks one way.
#[derive(Debug)]
struct Run {
    style: Style,
    text: String,
}

/// The runs of a line so far; a run in the same style as the last is
/// joined to it, so a line that repeats a colour code gets one span.
#[derive(Default)]
struct Runs(Vec<Run>);

impl Runs {
    fn push(&mut self, style: Style, text: &str) {
        if text.is_empty() {
            return;
        }
        match self.0.last_mut() {
            Some(last) if last.style == style => last.text.push_str(text),
            _ => self.0.push(Run { style, text: text.to_string() }),
        }
    }
}

/// A log line with its SGR colours as styled spans and every other escape
/// or control sequence dropped. Text is escaped by maud; styled runs are
/// `<span style="…">`, plain runs bare text.
pub fn render(text: &str) -> Markup {
    let runs = parse(text);
    html! {
        @for run in &runs {
            @if let Some(css) = run.style.css() {
                span style=(css) { (run.text) }
            } @else {
                (run.text)
            }
        }
    }
}

/// The line as styled runs. Sequences are found by their ASCII bytes
/// (ESC, C0) or by the two bytes of a C1 control in UTF-8 (`C2 80`–`C2 9F`);
/// none of those occur inside another character's encoding, and a sequence
/// only ever consumes ASCII bytes up to its end (or the whole rest of the
/// line), so every cut falls on a char boundary.
fn parse(text: &str) -> Vec<Run> {
    let bytes = text.as_bytes();
    let mut runs = Runs::default();
    let mut style = Style::default();
    let mut plain_from = 0;
    let mut at = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let dropped = match rest[0] {
            ESC => Some(escape_len(rest)),
            _ => control_len(rest),
        };
        let Some(len) = dropped else {
            at += 1;
            continue;
        };
        // The text so far is in the style from before this sequence.
        runs.push(style, text.get(plain_from..at).unwrap_or_default());
        if rest[0] == ESC {
            if let Some(params) = sgr_params(&rest[..len]) {
                apply_sgr(params, &mut style);
            }
        }
        at += len;
        plain_from = at;
    }
    runs.push(style, text.get(plain_from..).unwrap_or_default());
    runs.0
}

/// The length of a control character at the start of `rest`: any C0 but
/// TAB (ESC is handled apart), DEL, and C1 (U+0080–U+009F). `None` when
/// `rest` starts with anything else.
fn control_len(rest: &[u8]) -> Option<usize> {
    match rest {
        [b'\t', ..] => None,
        [b, ..] if *b < 0x20 || *b == 0x7f => Some(1),
        [0xc2, 0x80..=0x9f, ..] => Some(2),
        _ => None,
    }
}

/// The length of the escape sequence at the start of `rest` (which starts
/// with ESC): at least 1, so the caller always moves on.
fn escape_len(rest: &[u8]) -> usize {
    match rest.get(1) {
        Some(b'[') => csi_len(rest),
        Some(b']' | b'P' | b'X' | b'^' | b'_') => string_len(rest),
        Some(_) => short_escape_len(rest),
        None => 1,
    }
}

/// How many bytes at the start of `bytes` are in `range`.
fn count(bytes: &[u8], range: RangeInclusive<u8>) -> usize {
    bytes.iter().take_while(|&&b| range.contains(&b)).count()
}

/// `ESC [`, parameter bytes, intermediate bytes, one final byte. A byte
/// that cannot belong to the sequence (another ESC, a control, the end of
/// the line, a non-ASCII byte) cuts it short there: what was read is
/// dropped and that byte is looked at afresh.
fn csi_len(rest: &[u8]) -> usize {
    let params_end = 2 + count(&rest[2..], 0x30..=0x3f);
    let end = params_end + count(&rest[params_end..], 0x20..=0x2f);
    match rest.get(end) {
        Some(0x40..=0x7e) => end + 1,
        _ => end,
    }
}

/// OSC (`ESC ]`) and the other string sequences (DCS, SOS, PM, APC): a
/// body ended by BEL or ST (`ESC \`). An ESC that does not start ST ends
/// the body too and starts the next sequence, as in a terminal. With no
/// end the rest of the line is part of it, and dropped.
fn string_len(rest: &[u8]) -> usize {
    let body = &rest[2..];
    match body.iter().position(|&b| b == BEL || b == ESC) {
        Some(i) if body[i] == BEL => 2 + i + 1,
        Some(i) if body.get(i + 1) == Some(&b'\\') => 2 + i + 2,
        Some(i) => 2 + i,
        None => rest.len(),
    }
}

/// Any other escape: `ESC`, intermediate bytes, one final byte (`ESC (B`,
/// `ESC 7`, `ESC M`). A lone ESC before something else is just the ESC.
fn short_escape_len(rest: &[u8]) -> usize {
    let end = 1 + count(&rest[1..], 0x20..=0x2f);
    match rest.get(end) {
        Some(0x30..=0x7e) => end + 1,
        _ => end,
    }
}

/// The parameters of a whole SGR sequence (`ESC [ params m`, no
/// intermediate bytes); `None` for any other sequence.
fn sgr_params(sequence: &[u8]) -> Option<&[u8]> {
    let params = sequence.strip_prefix(b"\x1b[")?.strip_suffix(b"m")?;
    params.iter().all(|b| b.is_ascii_digit() || *b == b';' || *b == b':').then_some(params)
}

/// A parameter's value. Empty is 0, as terminals read it; anything too big
/// saturates, which no code or colour matches, so it is then ignored.
fn number(digits: &[u8]) -> u32 {
    digits.iter().fold(0u32, |n, &d| n.saturating_mul(10).saturating_add(u32::from(d.wrapping_sub(b'0'))))
}

/// Applies SGR parameters (`1;31`, `38;5;208`, `38;2;255;128;0`,
/// `38:2::255:128:0`) to the style. Unknown codes change nothing; a colour
/// missing its numbers, or with numbers out of range, is dropped, not
/// guessed. Each parameter is looked at once.
fn apply_sgr(params: &[u8], style: &mut Style) {
    let mut groups = params.split(|&b| b == b';');
    while let Some(group) = groups.next() {
        if group.contains(&b':') {
            apply_colon_group(group, style);
            continue;
        }
        match number(group) {
            code @ (38 | 48) => {
                let colour = extended_colour(&mut groups.by_ref().map(number));
                set_colour(code, colour, style);
            }
            code => apply_code(code, style),
        }
    }
}

/// The colour after a `38;` or `48;`: `5;N` from the palette or `2;R;G;B`.
/// Takes only the values it needs, and all of them even when one is out of
/// range, so they are not read as codes of their own.
fn extended_colour(values: &mut impl Iterator<Item = u32>) -> Option<Rgb> {
    match values.next()? {
        5 => u8::try_from(values.next()?).ok().map(palette),
        2 => {
            let (r, g, b) = (values.next()?, values.next()?, values.next()?);
            rgb(r, g, b)
        }
        _ => None,
    }
}

/// A parameter with sub-parameters (ITU T.416): `38:5:N`, `38:2:R:G:B` or
/// `38:2:<colour space>:R:G:B` (and 48), `4:N` for the underline styles.
fn apply_colon_group(group: &[u8], style: &mut Style) {
    let mut values = group.split(|&b| b == b':').map(number);
    let Some(code) = values.next() else { return };
    // Five after the code are all a colour can use; anything past them
    // (T.416's tolerance fields) is ignored.
    let tail: Vec<u32> = values.take(5).collect();
    match code {
        38 | 48 => {
            let colour = match tail.as_slice() {
                [5, n, ..] => u8::try_from(*n).ok().map(palette),
                [2, _, r, g, b] | [2, r, g, b] => rgb(*r, *g, *b),
                _ => None,
            };
            set_colour(code, colour, style);
        }
        // `4:0` is "not underlined"; every other kind (curly, double…) is shown plain.
        4 => style.underline = !matches!(tail.first(), Some(0)),
        _ => {}
    }
}

fn set_colour(code: u32, colour: Option<Rgb>, style: &mut Style) {
    let Some(colour) = colour else { return };
    if code == 38 {
        style.fg = Some(colour);
    } else {
        style.bg = Some(colour);
    }
}

/// One plain SGR code.
fn apply_code(code: u32, style: &mut Style) {
    match code {
        0 => *style = Style::default(),
        1 => style.bold = true,
        2 => style.dim = true,
        3 => style.italic = true,
        4 => style.underline = true,
        22 => {
            style.bold = false;
            style.dim = false;
        }
        23 => style.italic = false,
        24 => style.underline = false,
        30..=37 => style.fg = standard(code - 30),
        39 => style.fg = None,
        40..=47 => style.bg = standard(code - 40),
        49 => style.bg = None,
        90..=97 => style.fg = standard(code - 90 + 8),
        100..=107 => style.bg = standard(code - 100 + 8),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn html(text: &str) -> String {
        render(text).into_string()
    }

    /// Whether there is a C0 control other than TAB, DEL, or a C1 control.
    fn has_control(s: &str) -> bool {
        s.chars().any(|c| c.is_control() && c != '\t')
    }

    #[test]
    fn plain_text_is_bare_and_escaped() {
        assert_eq!(html("hello world"), "hello world");
        assert_eq!(html("a\tb"), "a\tb");
        assert_eq!(html(""), "");
        assert_eq!(
            html("\x1b[31m<script>alert(\"x\")</script>&"),
            "<span style=\"color:#cd3131\">&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;</span>"
        );
    }

    #[test]
    fn colours_and_bold_become_styles() {
        assert_eq!(html("\x1b[31mred\x1b[0m plain"), "<span style=\"color:#cd3131\">red</span> plain");
        assert_eq!(
            html("\x1b[1;31merror\x1b[m: x"),
            "<span style=\"color:#cd3131;font-weight:bold\">error</span>: x"
        );
        assert_eq!(html("\x1b[91mX"), "<span style=\"color:#f14c4c\">X</span>");
        assert_eq!(html("\x1b[107mX"), "<span style=\"background-color:#ffffff\">X</span>");
        assert_eq!(html("\x1b[2;3mX"), "<span style=\"opacity:0.7;font-style:italic\">X</span>");
    }

    #[test]
    fn codes_turn_off_and_reset() {
        assert_eq!(
            html("\x1b[1;3;4ma\x1b[22;23;24mb"),
            "<span style=\"font-weight:bold;font-style:italic;text-decoration:underline\">a</span>b"
        );
        assert_eq!(
            html("\x1b[31;42ma\x1b[39mb\x1b[49mc"),
            "<span style=\"color:#cd3131;background-color:#0dbc79\">a</span>\
             <span style=\"background-color:#0dbc79\">b</span>c"
        );
        assert_eq!(
            html("\x1b[1;32mok\x1b[0mdone"),
            "<span style=\"color:#0dbc79;font-weight:bold\">ok</span>done"
        );
        // An empty parameter is 0: `ESC[;1m` resets, then bolds.
        assert_eq!(
            html("\x1b[31ma\x1b[;1mb"),
            "<span style=\"color:#cd3131\">a</span><span style=\"font-weight:bold\">b</span>"
        );
    }

    #[test]
    fn runs_in_one_style_are_joined() {
        assert_eq!(html("\x1b[31ma\x1b[31mb\x1b[2Kc"), "<span style=\"color:#cd3131\">abc</span>");
    }

    #[test]
    fn the_256_colour_palette() {
        assert_eq!(html("\x1b[38;5;196mX"), "<span style=\"color:#ff0000\">X</span>");
        assert_eq!(html("\x1b[38;5;1mX"), "<span style=\"color:#cd3131\">X</span>");
        assert_eq!(html("\x1b[38;5;16mX"), "<span style=\"color:#000000\">X</span>");
        assert_eq!(html("\x1b[38;5;110mX"), "<span style=\"color:#87afd7\">X</span>");
        assert_eq!(html("\x1b[48;5;232mX"), "<span style=\"background-color:#080808\">X</span>");
        assert_eq!(html("\x1b[48;5;255mX"), "<span style=\"background-color:#eeeeee\">X</span>");
        assert_eq!(html("\x1b[38:5:196mX"), "<span style=\"color:#ff0000\">X</span>");
    }

    #[test]
    fn truecolour() {
        assert_eq!(html("\x1b[38;2;255;128;0mX"), "<span style=\"color:#ff8000\">X</span>");
        assert_eq!(html("\x1b[48;2;1;2;3mX"), "<span style=\"background-color:#010203\">X</span>");
        assert_eq!(html("\x1b[38:2::255:128:0mX"), "<span style=\"color:#ff8000\">X</span>");
        assert_eq!(html("\x1b[38:2:255:128:0mX"), "<span style=\"color:#ff8000\">X</span>");
        assert_eq!(
            html("\x1b[1;38;2;0;0;255;4mX"),
            "<span style=\"color:#0000ff;font-weight:bold;text-decoration:underline\">X</span>"
        );
    }

    #[test]
    fn broken_colours_are_dropped_not_guessed() {
        // Missing numbers: nothing to colour with.
        assert_eq!(html("\x1b[38;5mX"), "X");
        assert_eq!(html("\x1b[38;2;1;2mX"), "X");
        assert_eq!(html("\x1b[38mX"), "X");
        // Out of range: the numbers are used up, not read as bold (1) or
        // underline (4).
        assert_eq!(html("\x1b[38;2;300;1;4mX"), "X");
        assert_eq!(html("\x1b[38;5;256mX"), "X");
        assert_eq!(html("\x1b[99999999999999999999mX"), "X");
        assert_eq!(html("\x1b[38;5;99999999999999999999mX"), "X");
        // Private parameters are not SGR.
        assert_eq!(html("\x1b[?1mX"), "X");
        // Intermediate bytes make it another sequence.
        assert_eq!(html("\x1b[1 mX"), "X");
    }

    #[test]
    fn other_sequences_are_dropped() {
        assert_eq!(html("\x1b[2K\x1b[1Aprogress\r"), "progress");
        assert_eq!(html("\x1b[?25lhidden\x1b[?25h"), "hidden");
        assert_eq!(html("a\x1b]0;title\x07b"), "ab");
        assert_eq!(html("a\x1b]8;;https://example.com\x1b\\link\x1b]8;;\x1b\\b"), "alinkb");
        assert_eq!(html("\x1b(Bx\x1b7y\x1bMz"), "xyz");
        assert_eq!(html("a\x1bPq#0;1;2\x1b\\b"), "ab");
        assert_eq!(html("bell\x07 back\x08space\x00"), "bell backspace");
        assert_eq!(html("c1\u{9b}31m"), "c131m");
    }

    #[test]
    fn an_unterminated_osc_drops_the_rest_of_the_line() {
        assert_eq!(html("before\x1b]0;window title never ends"), "before");
        assert_eq!(html("\x1b[32mok\x1b]8;;http://x"), "<span style=\"color:#0dbc79\">ok</span>");
        // An ESC inside ends it and starts the next sequence.
        assert_eq!(html("a\x1b]0;t\x1b[31mb"), "a<span style=\"color:#cd3131\">b</span>");
    }

    #[test]
    fn truncated_sequences_are_dropped() {
        assert_eq!(html("x\x1b"), "x");
        assert_eq!(html("x\x1b["), "x");
        assert_eq!(html("x\x1b[1;31"), "x");
        // Cut short by another sequence: the first is dropped, the second
        // applies.
        assert_eq!(html("\x1b[1\x1b[31mX"), "<span style=\"color:#cd3131\">X</span>");
        // Cut short by a non-ASCII character, which is kept.
        assert_eq!(html("\x1b[1é"), "é");
    }

    #[test]
    fn nothing_hostile_gets_through() {
        let many_params = format!("\x1b[{}1mX", "1;".repeat(10_000));
        let many_colons = format!("\x1b[38{}mX", ":2".repeat(10_000));
        let many_escapes = "\x1b".repeat(10_000);
        let nasty = [
            "\x1b",
            "\x1b[",
            "\x1b]",
            "\x1b[38;5m",
            "\x1b[38;2;1m",
            "\x1b[48;2m",
            "\x1b[99999999999999999999m",
            "\x1b[38;5;99999999999999999999m",
            "\x1b]0;title",
            "\x1b]0;title\x1b",
            "\x1bP1$r\x1b",
            "a\x1b\x1b\x1b[[m",
            "\x1b[\x1b[m",
            "\x1b[1;31",
            "\x1b[é\x1b]é\x1bé",
            "é\x1b[31mé\u{85}\u{9c}",
            "\u{9b}31m\u{9d}0;x\u{9c}",
            "\x00\x01\x07\x08\n\r\x0b\x0c\x7f",
            "\x1b[31m\"><script>alert(1)</script>",
            "\x1b[38;2;\"><img>m",
            many_params.as_str(),
            many_colons.as_str(),
            many_escapes.as_str(),
        ];
        for input in nasty {
            let out = html(input);
            assert!(!out.contains('\x1b'), "{input:?} gave {out:?}");
            assert!(!has_control(&out), "{input:?} gave {out:?}");
            assert!(!out.contains("<script") && !out.contains("<img"), "{input:?} gave {out:?}");
        }
        assert_eq!(html(&many_params), "<span style=\"font-weight:bold\">X</span>");
    }

    #[test]
    fn styles_come_only_from_the_tables() {
        // Whatever the parameters, a style attribute holds only these.
        let out = html("\x1b[38;2;1;2;3;48;5;100;1;2;3;4;91mX");
        let style = out.split("style=\"").nth(1).and_then(|s| s.split('"').next()).unwrap_or_default();
        assert!(style.chars().all(|c| c.is_ascii_alphanumeric() || "#:;-.".contains(c)), "{style}");
    }
}
