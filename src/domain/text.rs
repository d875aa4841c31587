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

/// Unicode format characters (general category Cf): invisible, and some reorder what is shown
/// around them (U+202E RIGHT-TO-LEFT OVERRIDE turns "gpj.exe" into "exe.jpg"). No person
/// means to type them into a name or a title.
pub fn is_format_char(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{0600}'..='\u{0605}' | '\u{061C}' | '\u{06DD}' | '\u{070F}'
        | '\u{0890}'..='\u{0891}' | '\u{08E2}' | '\u{180E}' | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}'
        | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}' | '\u{110BD}' | '\u{110CD}'
        | '\u{13430}'..='\u{1343F}' | '\u{1BCA0}'..='\u{1BCA3}' | '\u{1D173}'..='\u{1D17A}'
        | '\u{E0001}' | '\u{E0020}'..='\u{E007F}')
}

/// The bidirectional embedding, override and isolate controls: they can make text read in
/// another order than it was written, so they are dropped from message bodies too.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Folds every run of white space and control characters (CR and LF above all) into one space,
/// and drops Unicode format characters. Names, titles and organisations are single-line values,
/// and some of them reach a header.
pub fn single_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut gap = false;
    for c in s.chars() {
        if is_format_char(c) {
            continue;
        }
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
/// characters, which no person types and which some mail clients show as garbage, and the
/// bidirectional controls.
pub fn multi_line(s: &str) -> String {
    s.trim()
        .replace("\r\n", "\n")
        .replace('\r', "\n")
        .chars()
        .filter(|c| (!c.is_control() || *c == '\n' || *c == '\t') && !is_bidi_control(*c))
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
    fn format_characters_are_removed_from_single_lines_and_bidi_controls_from_bodies() {
        assert_eq!(single_line("Sam\u{202E}gpj.exe"), "Samgpj.exe");
        assert_eq!(
            single_line("\u{FEFF}Riverside\u{200B} Academy\u{2066}\u{00AD}"),
            "Riverside Academy"
        );
        assert_eq!(single_line("\u{E0041}tag"), "tag");
        // Letters of right-to-left scripts are not format characters: they stay.
        assert_eq!(single_line("مدرسة"), "مدرسة");
        assert_eq!(multi_line("a\u{202E}b\u{2067}c\u{200D}d"), "abc\u{200D}d");
    }

    #[test]
    fn multi_line_keeps_paragraphs() {
        assert_eq!(multi_line("a\r\nb\rc\u{0}d\n"), "a\nb\ncd");
    }
}
