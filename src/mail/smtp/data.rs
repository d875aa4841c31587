//! A message as it goes after DATA (RFC 5321 section 4.5.2): lines end with CRLF, a line that
//! starts with "." gets a second one, and "." alone on the last line ends it.

/// The bytes to write after the relay's 354: `message` with every line ending made CRLF (a
/// bare CR or LF would be read as a line end by some relays and not by others, which is how
/// a message could end its own data early), dot-stuffed, ending in CRLF, then ".\r\n".
pub(crate) fn payload(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 64 + 8);
    // Line by line, each copied whole up to its end (memchr finds it): every message goes
    // through here, and byte by byte it was a hot spot of a newsletter's fan-out.
    let mut rest = message;
    while !rest.is_empty() {
        if rest[0] == b'.' {
            out.push(b'.');
        }
        match memchr::memchr2(b'\r', b'\n', rest) {
            Some(end) => {
                out.extend_from_slice(&rest[..end]);
                out.extend_from_slice(b"\r\n");
                let crlf = rest[end] == b'\r' && rest.get(end + 1) == Some(&b'\n');
                rest = &rest[end + if crlf { 2 } else { 1 }..];
            }
            None => {
                out.extend_from_slice(rest);
                out.extend_from_slice(b"\r\n");
                rest = &[];
            }
        }
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> String {
        String::from_utf8(payload(s.as_bytes())).unwrap()
    }

    #[test]
    fn lines_that_start_with_a_dot_get_another() {
        assert_eq!(
            p("Subject: x\r\n\r\n.hidden\r\n..two\r\nmid.dle\r\n.\r\n"),
            "Subject: x\r\n\r\n..hidden\r\n...two\r\nmid.dle\r\n..\r\n.\r\n"
        );
        assert_eq!(p(".first"), "..first\r\n.\r\n");
    }

    #[test]
    fn the_end_is_crlf_dot_crlf_whatever_the_message_ends_with() {
        assert_eq!(p("a\r\n"), "a\r\n.\r\n");
        assert_eq!(p("a"), "a\r\n.\r\n");
        assert_eq!(p(""), ".\r\n");
        assert_eq!(p("a\r\n\r\n"), "a\r\n\r\n.\r\n");
    }

    #[test]
    fn bare_line_ends_become_crlf_so_no_message_can_end_its_data_early() {
        assert_eq!(p("a\nb\rc\r\n"), "a\r\nb\r\nc\r\n.\r\n");
        // The "smuggling" shapes: each comes out as a stuffed dot line, never a terminator.
        assert_eq!(
            p("a\n.\nMAIL FROM:<x>\r\n"),
            "a\r\n..\r\nMAIL FROM:<x>\r\n.\r\n"
        );
        assert_eq!(p("a\r\n.\rb"), "a\r\n..\r\nb\r\n.\r\n");
        assert_eq!(p("\r\r\n"), "\r\n\r\n.\r\n");
    }

    #[test]
    fn eight_bit_bytes_pass_untouched() {
        let body = "Über\r\n".as_bytes();
        let mut want = body.to_vec();
        want.extend_from_slice(b".\r\n");
        assert_eq!(payload(body), want);
    }

    /// The rule written the plain way, byte by byte: what `payload` must equal.
    fn byte_by_byte(message: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut line_start = true;
        let mut bytes = message.iter().copied().peekable();
        while let Some(b) = bytes.next() {
            match b {
                b'\r' => {
                    bytes.next_if_eq(&b'\n');
                    out.extend_from_slice(b"\r\n");
                    line_start = true;
                }
                b'\n' => {
                    out.extend_from_slice(b"\r\n");
                    line_start = true;
                }
                b'.' if line_start => {
                    out.extend_from_slice(b"..");
                    line_start = false;
                }
                _ => {
                    out.push(b);
                    line_start = false;
                }
            }
        }
        if !line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        out
    }

    proptest::proptest! {
        #[test]
        fn any_message_is_stuffed_as_the_byte_by_byte_rule_says(
            message in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just(b'.'),
                    proptest::strategy::Just(b'\r'),
                    proptest::strategy::Just(b'\n'),
                    proptest::num::u8::ANY,
                ],
                0..200,
            )
        ) {
            proptest::prop_assert_eq!(payload(&message), byte_by_byte(&message));
        }
    }
}
