use serde::{Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A bare email address (`local@domain`): no display name, no white space, no control
/// characters, so it is safe in a header as it is.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EmailAddress(String);

impl EmailAddress {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let s = raw.trim();
        if s.is_empty() {
            return Err("must not be empty".into());
        }
        if s.len() > 254 {
            return Err("not an email address (longer than 254 characters)".into());
        }
        if s.chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>')
        {
            return Err("not an email address".into());
        }
        match lettre::Address::from_str(s) {
            Ok(addr) if addr.domain().contains('.') || addr.domain() == "localhost" => {
                Ok(EmailAddress(s.to_owned()))
            }
            _ => Err("not an email address".into()),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form used to find every row about one person (erasure, de-duplication).
    pub fn normalised(&self) -> String {
        self.0.to_lowercase()
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Debug never prints the address: it is personal data and Debug output ends up in logs.
impl fmt::Debug for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EmailAddress(..)")
    }
}

impl Serialize for EmailAddress {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_addresses() {
        let a = EmailAddress::parse("  s.okafor@school.example.org ").unwrap();
        assert_eq!(a.as_str(), "s.okafor@school.example.org");
    }

    #[test]
    fn rejects_display_names_line_breaks_and_junk() {
        for bad in [
            "",
            "no-at-sign",
            "Sam <sam@example.org>",
            "sam@example.org\r\nBcc: x@example.org",
            "sam@exa mple.org",
            "sam@nodot",
            "@example.org",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn debug_hides_the_address() {
        let a = EmailAddress::parse("a@example.org").unwrap();
        assert!(!format!("{a:?}").contains("example"));
    }

    /// The limits, at their edges: 254 characters pass, 255 do not; each character that cannot
    /// stand in a bare address is refused on its own.
    #[test]
    fn the_edges_of_an_address() {
        let domain = format!(
            "{}.{}.{}.org",
            "b".repeat(63),
            "c".repeat(60),
            "d".repeat(60)
        );
        let at_limit = format!("{}@{domain}", "a".repeat(64));
        assert_eq!(at_limit.len(), 254);
        assert!(EmailAddress::parse(&at_limit).is_ok());
        let over = format!("a{at_limit}");
        assert!(EmailAddress::parse(&over).unwrap_err().contains("254"));
        for bad in [
            "a b@example.org",
            "a\u{7}b@example.org",
            "<a@example.org",
            "a@example.org>",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad:?}");
        }
        // White space and control characters beyond ASCII, which the address grammar would take
        // as letters: refused by this type's own rule.
        for bad in [
            "a\u{2028}b@example.org",
            "a\u{a0}b@example.org",
            "a\u{85}b@example.org",
            "a\u{90}b@example.org",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad:?}");
        }
        // A quoted local part may hold spaces and angle brackets in the address grammar: not
        // here, where an address must be safe in a header as it is.
        for bad in ["\"a b\"@example.org", "\"<a>\"@example.org"] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad:?}");
        }
        assert!(EmailAddress::parse("\"ab\"@example.org").is_ok());
        assert!(
            EmailAddress::parse("jö@exämple.org").is_ok(),
            "other letters pass"
        );
        let a = EmailAddress::parse(" Jo.Bloggs@School.Example.org ").unwrap();
        assert_eq!(a.to_string(), "Jo.Bloggs@School.Example.org");
        assert_eq!(a.normalised(), "jo.bloggs@school.example.org");
        assert_eq!(format!("{a:?}"), "EmailAddress(..)");
    }
}
