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
}
