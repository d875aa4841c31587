use std::fmt;

/// Why one field of an event was refused: `data.email: not an email address`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Folds every run of white space and control characters (CR and LF above all) into one space.
/// Names, titles and organisations are single-line values, and some of them reach a header.
pub fn single_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut gap = false;
    for c in s.chars() {
        if c.is_whitespace() || c.is_control() {
            gap = true;
        } else {
            if gap && !out.is_empty() {
                out.push(' ');
            }
            gap = false;
            out.push(c);
        }
    }
    out
}

/// Keeps line breaks (normalised to `\n`) and tabs in a multi-line body; drops other control
/// characters, which no person types and which some mail clients show as garbage.
pub fn multi_line(s: &str) -> String {
    s.trim()
        .replace("\r\n", "\n")
        .replace('\r', "\n")
        .chars()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_line_folds_breaks() {
        assert_eq!(
            single_line(" Sam\r\nBcc: x@example.org \t end "),
            "Sam Bcc: x@example.org end"
        );
        assert_eq!(single_line("\u{0}a\u{7}b"), "a b");
    }

    #[test]
    fn multi_line_keeps_paragraphs() {
        assert_eq!(multi_line("a\r\nb\rc\u{0}d\n"), "a\nb\ncd");
    }
}
