//! SMTP replies (RFC 5321 section 4.2) and what a relay's EHLO reply offers.

use crate::mail::SendError;

/// One reply: its code and the text of each of its lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

/// A reply longer than this is not a relay talking SMTP.
pub(crate) const MAX_REPLY_BYTES: usize = 64 * 1024;

impl Reply {
    /// 2xx: done.
    pub fn is_completion(&self) -> bool {
        self.code / 100 == 2
    }

    /// 4xx or 5xx: refused, for now or for good.
    pub fn is_refusal(&self) -> bool {
        matches!(self.code / 100, 4 | 5)
    }

    /// The lines' text, joined.
    pub fn text(&self) -> String {
        self.lines
            .iter()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The failure this reply is, in the shapes lettre wrote before (`permanent error (550):
    /// ...`), which `admin::outbox` reads the code from: 4xx passing, 5xx for good, and a code
    /// that does not belong where it came (a relay out of step) passing too.
    pub fn error(&self) -> SendError {
        match self.code / 100 {
            5 => SendError::Permanent(format!("permanent error ({}): {}", self.code, self.text())),
            4 => SendError::Transient(format!("transient error ({}): {}", self.code, self.text())),
            _ => SendError::Transient(format!(
                "response error: unexpected reply ({}): {}",
                self.code,
                self.text()
            )),
        }
    }
}

/// The first complete reply at the start of `buf` and the number of bytes it took; `None`
/// while it is incomplete. Lines end with CRLF (a bare LF is taken too); every line of a
/// multi-line reply carries the same code, all but the last with `-` after it.
pub(crate) fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    let mut at = 0;
    let mut code = None;
    let mut lines = Vec::new();
    loop {
        let rest = &buf[at..];
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return if buf.len() > MAX_REPLY_BYTES {
                Err(format!("a reply longer than {MAX_REPLY_BYTES} bytes"))
            } else {
                Ok(None)
            };
        };
        at += end + 1;
        if at > MAX_REPLY_BYTES {
            return Err(format!("a reply longer than {MAX_REPLY_BYTES} bytes"));
        }
        let line = rest[..end].strip_suffix(b"\r").unwrap_or(&rest[..end]);
        let this = match line {
            [a @ b'2'..=b'5', b @ b'0'..=b'9', c @ b'0'..=b'9', ..] => {
                u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0')
            }
            _ => return Err(format!("not an SMTP reply: {:?}", shown(line))),
        };
        if code.is_some_and(|c| c != this) {
            return Err(format!(
                "a reply whose lines have different codes: {:?}",
                shown(line)
            ));
        }
        code = Some(this);
        let last = match line.get(3) {
            None | Some(b' ') => true,
            Some(b'-') => false,
            Some(_) => return Err(format!("not an SMTP reply: {:?}", shown(line))),
        };
        lines.push(String::from_utf8_lossy(line.get(4..).unwrap_or_default()).into_owned());
        if last {
            return Ok(Some((Reply { code: this, lines }, at)));
        }
    }
}

/// A line for an error message, cut short.
fn shown(line: &[u8]) -> String {
    String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned()
}

/// The service extensions (RFC 5321 section 4.1.1.1) that the client uses, from the EHLO reply.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Extensions {
    /// RFC 2920: commands may be sent in groups.
    pub pipelining: bool,
    /// RFC 3207.
    pub starttls: bool,
    /// RFC 4954 mechanisms.
    pub auth_plain: bool,
    pub auth_login: bool,
    /// RFC 1870: MAIL FROM may declare the size.
    pub size: bool,
    /// RFC 6152: a body with 8-bit bytes may be declared.
    pub eight_bit_mime: bool,
    /// RFC 6531: addresses in UTF-8.
    pub smtputf8: bool,
}

impl Extensions {
    /// Reads the lines after the first (the first line greets with the relay's name).
    /// Keywords and mechanisms are case-insensitive; unknown ones are ignored.
    pub fn from_ehlo(reply: &Reply) -> Extensions {
        let mut ext = Extensions::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => ext.pipelining = true,
                "STARTTLS" => ext.starttls = true,
                "SIZE" => ext.size = true,
                "8BITMIME" => ext.eight_bit_mime = true,
                "SMTPUTF8" => ext.smtputf8 = true,
                "AUTH" => {
                    for mechanism in words {
                        match mechanism.to_ascii_uppercase().as_str() {
                            "PLAIN" => ext.auth_plain = true,
                            "LOGIN" => ext.auth_login = true,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        ext
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(raw: &str) -> Reply {
        let (reply, used) = parse(raw.as_bytes()).unwrap().expect("a whole reply");
        assert_eq!(used, raw.len(), "the whole reply was taken");
        reply
    }

    #[test]
    fn single_line_replies() {
        assert_eq!(
            one("250 2.1.0 Ok\r\n"),
            Reply {
                code: 250,
                lines: vec!["2.1.0 Ok".into()]
            }
        );
        // A bare code, and a bare LF.
        assert_eq!(one("250\r\n").lines, [""]);
        assert_eq!(one("354 go on\n").code, 354);
        assert_eq!(one("250 \r\n").text(), "");
    }

    #[test]
    fn multi_line_replies() {
        let r = one("250-smtp.example.org\r\n250-PIPELINING\r\n250 8BITMIME\r\n");
        assert_eq!(r.code, 250);
        assert_eq!(r.lines, ["smtp.example.org", "PIPELINING", "8BITMIME"]);
        assert_eq!(r.text(), "smtp.example.org PIPELINING 8BITMIME");
    }

    #[test]
    fn an_incomplete_reply_waits_for_more() {
        for partial in [
            "",
            "2",
            "250",
            "250 Ok",
            "250 Ok\r",
            "250-a\r\n",
            "250-a\r\n250 b",
        ] {
            assert_eq!(parse(partial.as_bytes()), Ok(None), "{partial:?}");
        }
    }

    #[test]
    fn replies_that_arrived_together_are_taken_one_at_a_time() {
        let buf = b"250 2.1.0 Ok\r\n550-5.1.1 no\r\n550 5.1.1 such user\r\n354 go";
        let (first, n) = parse(buf).unwrap().unwrap();
        assert_eq!((first.code, n), (250, 14));
        let (second, m) = parse(&buf[n..]).unwrap().unwrap();
        assert_eq!(second.code, 550);
        assert_eq!(second.text(), "5.1.1 no 5.1.1 such user");
        assert_eq!(parse(&buf[n + m..]), Ok(None));
    }

    #[test]
    fn what_is_not_a_reply_is_refused() {
        for bad in [
            "hello\r\n",
            "25\r\n",
            "2x0 Ok\r\n",
            "650 Ok\r\n",
            "150 Ok\r\n",
            "250Ok\r\n",
            "250-a\r\n251 b\r\n",
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
        let endless = vec![b'2'; MAX_REPLY_BYTES + 1];
        assert!(parse(&endless).is_err());
        let mut many = b"250-x\r\n".repeat(MAX_REPLY_BYTES / 7 + 1);
        many.extend_from_slice(b"250 x\r\n");
        assert!(parse(&many).is_err());
    }

    #[test]
    fn refusals_read_as_lettre_wrote_them() {
        let r = one("550 5.1.1 <a@example.org>: no such user\r\n");
        assert!(r.is_refusal() && !r.is_completion());
        assert_eq!(
            r.error(),
            SendError::Permanent(
                "permanent error (550): 5.1.1 <a@example.org>: no such user".into()
            )
        );
        assert_eq!(
            one("451-4.3.0 try\r\n451 later\r\n").error(),
            SendError::Transient("transient error (451): 4.3.0 try later".into())
        );
        assert!(matches!(
            one("354 go on\r\n").error(),
            SendError::Transient(t) if t.starts_with("response error")
        ));
    }

    #[test]
    fn ehlo_extensions() {
        let ext = Extensions::from_ehlo(&one(
            "250-smtp.example.org greets you\r\n250-pipelining\r\n250-SIZE 10240000\r\n\
             250-STARTTLS\r\n250-AUTH LOGIN cram-md5 plain\r\n250-8BITMIME\r\n\
             250-SMTPUTF8\r\n250-XCLIENT NAME\r\n250 \r\n",
        ));
        assert_eq!(
            ext,
            Extensions {
                pipelining: true,
                starttls: true,
                auth_plain: true,
                auth_login: true,
                size: true,
                eight_bit_mime: true,
                smtputf8: true,
            }
        );
        // The greeting line is not an extension, and a relay may offer nothing.
        assert_eq!(
            Extensions::from_ehlo(&one("250 PIPELINING\r\n")),
            Extensions::default()
        );
        let only_login = Extensions::from_ehlo(&one("250-x\r\n250 AUTH LOGIN\r\n"));
        assert!(only_login.auth_login && !only_login.auth_plain && !only_login.pipelining);
    }
}
