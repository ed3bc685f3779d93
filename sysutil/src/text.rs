//! Caller-supplied text in messages.

/// How much of a caller's string an error message repeats.
pub const ECHO_BYTES: usize = 128;

/// `s` for an error message: at most [`ECHO_BYTES`], control characters
/// escaped (`{:?}`), and the full length named when cut. A client's 1 MB name
/// or a registry's terminal escapes must not reach a reply or a log whole.
pub fn echo(s: &str) -> String {
    if s.len() <= ECHO_BYTES {
        return format!("{s:?}");
    }
    let mut end = ECHO_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}... ({} bytes)", &s[..end], s.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_is_bounded_and_escaped() {
        assert_eq!(echo("web"), "\"web\"");
        let long = "é".repeat(1000);
        let e = echo(&long);
        assert!(e.len() < 200 && e.ends_with("(2000 bytes)"), "{e}");
        assert_eq!(echo("a\u{1b}[31m"), "\"a\\u{1b}[31m\"");
    }
}
