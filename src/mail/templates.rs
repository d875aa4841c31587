//! Handlebars templates. Each email `NAME` is three files: `NAME/subject.hbs`, `NAME/text.hbs`
//! and `NAME/html.hbs`; the last two usually wrap themselves in the shared layouts
//! (`{{#> layout/html}}...{{/layout/html}}`). HTML is rendered with HTML escaping of every value;
//! subjects and text without, and subjects are folded to one line so that no CR or LF can reach
//! the header. Strict mode: a missing variable is an error, which `check` finds by rendering
//! every email with sample data built from the same types the handlers use.

use crate::domain::single_line;
use crate::problem::Problem;
use handlebars::Handlebars;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// The three parts of an email, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Marks the start and the end of a hole in a `Shell` (characters of Unicode's private use
/// area, which no template writes and no value is allowed to hold).
const HOLE_OPEN: char = '\u{E000}';
const HOLE_CLOSE: char = '\u{E001}';

fn hole_marker(i: usize) -> String {
    format!("{HOLE_OPEN}{i}{HOLE_CLOSE}")
}

fn holds_marker(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains([HOLE_OPEN, HOLE_CLOSE]),
        Value::Array(a) => a.iter().any(holds_marker),
        Value::Object(o) => o
            .iter()
            .any(|(k, v)| k.contains([HOLE_OPEN, HOLE_CLOSE]) || holds_marker(v)),
        _ => false,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Hole(usize),
}

fn pieces(rendered: &str) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut rest = rendered;
    while let Some(start) = rest.find(HOLE_OPEN) {
        let after = &rest[start + HOLE_OPEN.len_utf8()..];
        let Some(end) = after.find(HOLE_CLOSE) else {
            break;
        };
        let Ok(i) = after[..end].parse::<usize>() else {
            break;
        };
        if start > 0 {
            out.push(Piece::Literal(rest[..start].to_owned()));
        }
        out.push(Piece::Hole(i));
        rest = &after[end + HOLE_CLOSE.len_utf8()..];
    }
    if !rest.is_empty() {
        out.push(Piece::Literal(rest.to_owned()));
    }
    out
}

/// An email rendered once with holes (see `Templates::shell`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shell {
    subject: Vec<Piece>,
    text: Vec<Piece>,
    html: Vec<Piece>,
    holes: usize,
}

impl Shell {
    /// One copy: `values[i]` in hole `i`, HTML-escaped in the HTML part, folded to one line in
    /// the subject, as a whole rendering would have them.
    pub fn fill(&self, values: &[&str]) -> Result<Rendered, String> {
        if values.len() != self.holes {
            return Err(format!("{} values for {} holes", values.len(), self.holes));
        }
        let join = |pieces: &[Piece], put: &dyn Fn(&str, &mut String)| {
            let mut out = String::new();
            for p in pieces {
                match p {
                    Piece::Literal(l) => out.push_str(l),
                    Piece::Hole(i) => put(values.get(*i).copied().unwrap_or_default(), &mut out),
                }
            }
            out
        };
        Ok(Rendered {
            subject: join(&self.subject, &|v, out| out.push_str(&single_line(v))),
            text: tidy_text(&join(&self.text, &|v, out| out.push_str(v))),
            html: join(&self.html, &|v, out| escape_html(v, out)),
        })
    }
}

/// Escapes a value for HTML text and double-quoted attributes alike.
fn escape_html(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
}

/// Shells by a caller's key (a newsletter, with or without the reader's name), a few at a time:
/// the newsletter being sent, and any still draining beside it.
#[derive(Default)]
pub struct Shells {
    held: std::sync::Mutex<Vec<(String, std::sync::Arc<Shell>)>>,
}

/// Shells kept at most; the oldest goes first.
const SHELLS_KEPT: usize = 16;

impl Shells {
    /// The shell for `key`, if it is held.
    pub fn get(&self, key: &str) -> Option<std::sync::Arc<Shell>> {
        self.lock()
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, s)| s.clone())
    }

    /// The shell for `key`, made with `make` if it is not held.
    pub fn get_or_make(
        &self,
        key: &str,
        make: impl FnOnce() -> Result<Option<Shell>, String>,
    ) -> Result<Option<std::sync::Arc<Shell>>, String> {
        if let Some(s) = self.get(key) {
            return Ok(Some(s));
        }
        let Some(shell) = make()? else {
            return Ok(None);
        };
        let shell = std::sync::Arc::new(shell);
        let mut held = self.lock();
        if held.len() >= SHELLS_KEPT {
            held.remove(0);
        }
        held.push((key.to_owned(), shell.clone()));
        Ok(Some(shell))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, std::sync::Arc<Shell>)>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct Templates {
    /// Escapes every value as HTML.
    html: Handlebars<'static>,
    /// Escapes nothing (subjects, plain text).
    text: Handlebars<'static>,
    /// Values every template may use, under `site`.
    site: Value,
}

fn hbs_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            hbs_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "hbs") {
            out.push(path);
        }
    }
    Ok(())
}

impl Templates {
    /// Compiles every `.hbs` file below `dir`; reports every file that does not compile.
    pub fn load(dir: &Path, public_url: &str) -> Result<Templates, Vec<Problem>> {
        let place = dir.display().to_string();
        let mut files = Vec::new();
        hbs_files(dir, &mut files)
            .map_err(|e| vec![Problem::new(&place, format!("cannot be read: {e}"))])?;
        files.sort();
        let mut html = Handlebars::new();
        html.set_strict_mode(true);
        html.register_helper("lines", Box::new(html_lines));
        let mut text = Handlebars::new();
        text.set_strict_mode(true);
        text.register_escape_fn(handlebars::no_escape);
        text.register_helper("lines", Box::new(text_lines));
        let mut problems = Vec::new();
        for file in files {
            let name = file
                .strip_prefix(dir)
                .unwrap_or(&file)
                .with_extension("")
                .to_string_lossy()
                .replace('\\', "/");
            let source = match std::fs::read_to_string(&file) {
                Ok(s) => s,
                Err(e) => {
                    problems.push(Problem::new(
                        file.display().to_string(),
                        format!("cannot be read: {e}"),
                    ));
                    continue;
                }
            };
            let compiled = html
                .register_template_string(&name, &source)
                .and_then(|()| text.register_template_string(&name, &source));
            if let Err(e) = compiled {
                problems.push(Problem::new(
                    file.display().to_string(),
                    single_line(&e.to_string()),
                ));
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Templates {
            html,
            text,
            site: json!({
                "name": "Regional Prevent education coordinators",
                "organisation": "Department for Education",
                "public_url": public_url,
                // The page's "coordinator contact form", which pages link to. The website is
                // what RPEC_PUBLIC_URL names (the worker's pages are served under it), and no
                // setting names the form itself, so the link is the site's home page.
                "contact_form_url": public_url,
            }),
        })
    }

    /// Whether all three parts of email `name` exist.
    pub fn has_email(&self, name: &str) -> bool {
        ["subject", "text", "html"]
            .iter()
            .all(|part| self.html.has_template(&format!("{name}/{part}")))
    }

    /// Renders email `name` with `context` (an object); `site` is added to it.
    pub fn render(&self, name: &str, context: &Value) -> Result<Rendered, String> {
        let mut data = context.clone();
        match data.as_object_mut() {
            Some(map) => {
                map.insert("site".into(), self.site.clone());
            }
            None => return Err("the template context must be an object".into()),
        }
        let part = |registry: &Handlebars<'static>, part: &str| {
            let template = format!("{name}/{part}");
            registry
                .render(&template, &data)
                .map_err(|e| format!("{template}: {}", single_line(&e.to_string())))
        };
        let subject = single_line(&part(&self.text, "subject")?);
        if subject.is_empty() {
            return Err(format!("{name}/subject: renders empty"));
        }
        let text = part(&self.text, "text")?;
        let html = part(&self.html, "html")?;
        let html = css_inline::inline(&html)
            .map_err(|e| format!("{name}/html: CSS inlining failed: {e}"))?;
        Ok(Rendered {
            subject,
            text: tidy_text(&text),
            html,
        })
    }

    /// Renders email `name` once, with holes where each copy's own values go (`holes`: keys of
    /// `context`, set here to markers): CSS is inlined once, and each copy only fills the holes
    /// (`Shell::fill`). None if a value in `context` already holds a marker character, so that
    /// the caller renders each copy whole instead.
    pub fn shell(
        &self,
        name: &str,
        context: &Value,
        holes: &[&str],
    ) -> Result<Option<Shell>, String> {
        if holds_marker(context) {
            return Ok(None);
        }
        let mut data = context.clone();
        let Some(map) = data.as_object_mut() else {
            return Err("the template context must be an object".into());
        };
        for (i, key) in holes.iter().enumerate() {
            map.insert((*key).to_owned(), Value::String(hole_marker(i)));
        }
        let rendered = self.render(name, &data)?;
        Ok(Some(Shell {
            subject: pieces(&rendered.subject),
            text: pieces(&rendered.text),
            html: pieces(&rendered.html),
            holes: holes.len(),
        }))
    }

    /// Renders web page `name` (`templates/pages/NAME.hbs`), every value HTML-escaped; `site`
    /// is added to the context.
    pub fn render_page(&self, name: &str, context: &Value) -> Result<String, String> {
        let mut data = context.clone();
        match data.as_object_mut() {
            Some(map) => {
                map.insert("site".into(), self.site.clone());
            }
            None => return Err("the page context must be an object".into()),
        }
        let template = format!("pages/{name}");
        self.html
            .render(&template, &data)
            .map_err(|e| format!("{template}: {}", single_line(&e.to_string())))
    }

    /// Renders every sample page, for `check`: each failure is a problem.
    pub fn check_pages(&self, dir: &Path, samples: &[(&'static str, Value)]) -> Vec<Problem> {
        samples
            .iter()
            .filter_map(|(name, context)| self.render_page(name, context).err())
            .map(|e| Problem::new(dir.display().to_string(), e))
            .collect()
    }

    /// Renders every sample, for `check`: each failure is a problem.
    pub fn check_samples(&self, dir: &Path, samples: &[(&'static str, Value)]) -> Vec<Problem> {
        let mut problems = Vec::new();
        for (name, context) in samples {
            if !self.has_email(name) {
                problems.push(Problem::new(
                    dir.join(name).display().to_string(),
                    "missing: an email needs subject.hbs, text.hbs and html.hbs",
                ));
                continue;
            }
            if let Err(e) = self.render(name, context) {
                problems.push(Problem::new(dir.display().to_string(), e));
            }
        }
        // An email no sample covers would be checked by nobody until a recipient saw it.
        for name in self.email_names() {
            if !samples.iter().any(|(n, _)| *n == name) {
                problems.push(Problem::new(
                    dir.join(&name).display().to_string(),
                    "no sample context renders this email: add one to handle::samples()",
                ));
            }
        }
        problems
    }

    /// Every email (a directory with a `subject.hbs`).
    fn email_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .text
            .get_templates()
            .keys()
            .filter_map(|k| k.strip_suffix("/subject"))
            .map(str::to_owned)
            .collect();
        names.sort();
        names
    }
}

/// `{{lines value}}` in HTML: the value escaped, each line break a `<br>`. Outlook on Windows
/// ignores `white-space: pre-wrap`, and an enquiry's paragraphs would run together.
fn html_lines(
    h: &handlebars::Helper<'_>,
    _: &Handlebars<'_>,
    _: &handlebars::Context,
    _: &mut handlebars::RenderContext<'_, '_>,
    out: &mut dyn handlebars::Output,
) -> handlebars::HelperResult {
    let lines: Vec<String> = lines_param(h)?
        .split('\n')
        .map(|line| handlebars::html_escape(line.trim_end_matches('\r')))
        .collect();
    out.write(&lines.join("<br>"))?;
    Ok(())
}

/// `{{lines value}}` in plain text: the value as it is.
fn text_lines(
    h: &handlebars::Helper<'_>,
    _: &Handlebars<'_>,
    _: &handlebars::Context,
    _: &mut handlebars::RenderContext<'_, '_>,
    out: &mut dyn handlebars::Output,
) -> handlebars::HelperResult {
    out.write(lines_param(h)?)?;
    Ok(())
}

/// The value `lines` was given; strict as the templates are: a missing one is an error (null
/// is nothing).
fn lines_param<'a>(h: &'a handlebars::Helper<'_>) -> Result<&'a str, handlebars::RenderError> {
    match h.param(0) {
        Some(p) if !p.is_value_missing() => Ok(p.value().as_str().unwrap_or_default()),
        _ => Err(handlebars::RenderErrorReason::ParamNotFoundForIndex("lines", 0).into()),
    }
}

/// Plain text from a template: trailing spaces dropped, no more than one blank line in a row.
fn tidy_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut blank = 0;
    for line in s.lines().map(str::trim_end) {
        if line.is_empty() {
            blank += 1;
            if blank > 1 || out.is_empty() {
                continue;
            }
        } else {
            blank = 0;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.trim_end().to_owned() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, body: &str) {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, body).unwrap();
    }

    fn sample_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "layout/html.hbs", "<html><head><style>p { color: red }</style></head><body>{{> @partial-block}}</body></html>");
        write(
            dir.path(),
            "layout/text.hbs",
            "{{> @partial-block}}\n\n\n-- {{site.name}}",
        );
        write(dir.path(), "hello/subject.hbs", "Hello {{name}}");
        write(
            dir.path(),
            "hello/text.hbs",
            "{{#> layout/text}}Hi {{name}}   \n{{/layout/text}}",
        );
        write(
            dir.path(),
            "hello/html.hbs",
            "{{#> layout/html}}<p>Hi {{name}}</p>{{/layout/html}}",
        );
        dir
    }

    #[test]
    fn renders_with_layouts_escaping_and_inlined_css() {
        let dir = sample_dir();
        let t = Templates::load(dir.path(), "http://x").unwrap();
        let r = t
            .render(
                "hello",
                &json!({"name": "<b>Sam</b>\r\nBcc: x@example.org"}),
            )
            .unwrap();
        assert_eq!(r.subject, "Hello <b>Sam</b> Bcc: x@example.org");
        assert!(
            r.text
                .starts_with("Hi <b>Sam</b>\nBcc: x@example.org\n\n-- Regional Prevent"),
            "{}",
            r.text
        );
        assert!(
            r.html
                .contains("<p style=\"color: red;\">Hi &lt;b&gt;Sam&lt;/b&gt;"),
            "{}",
            r.html
        );
    }

    #[test]
    fn a_filled_shell_is_the_whole_rendering() {
        let dir = sample_dir();
        let t = Templates::load(dir.path(), "http://x").unwrap();
        let shell = t
            .shell("hello", &json!({"name": "x"}), &["name"])
            .unwrap()
            .expect("a shell");
        for name in ["Sam", "Sam O Brien", "https://x.example/u?t=a&b=c"] {
            let whole = t.render("hello", &json!({ "name": name })).unwrap();
            assert_eq!(shell.fill(&[name]).unwrap(), whole, "{name}");
        }
        // Hostile values are escaped as a whole rendering escapes them.
        let hostile = "<b>Sam</b>\r\nBcc: x@example.org \"&";
        let filled = shell.fill(&[hostile]).unwrap();
        let whole = t.render("hello", &json!({ "name": hostile })).unwrap();
        assert_eq!(
            (&filled.subject, &filled.text),
            (&whole.subject, &whole.text)
        );
        assert!(
            filled
                .html
                .contains("<p style=\"color: red;\">Hi &lt;b&gt;Sam&lt;/b&gt;\r\nBcc: x@example.org &quot;&amp;</p>"),
            "{}",
            filled.html
        );
        assert!(!filled.html.contains("<b>"), "{}", filled.html);
        assert!(shell.fill(&[]).is_err());
    }

    #[test]
    fn a_context_holding_a_marker_gets_no_shell() {
        let dir = sample_dir();
        let t = Templates::load(dir.path(), "http://x").unwrap();
        let marked = json!({"name": "x", "other": ["a\u{E000}0\u{E001}"]});
        assert_eq!(t.shell("hello", &marked, &["name"]).unwrap(), None);
    }

    #[test]
    fn shells_are_made_once_per_key_and_a_few_are_kept() {
        let dir = sample_dir();
        let t = Templates::load(dir.path(), "http://x").unwrap();
        let shells = Shells::default();
        let made = std::cell::Cell::new(0);
        let make = || {
            made.set(made.get() + 1);
            t.shell("hello", &json!({"name": "x"}), &["name"])
        };
        let a = shells.get_or_make("a", make).unwrap().unwrap();
        let again = shells
            .get_or_make("a", || panic!("made twice"))
            .unwrap()
            .unwrap();
        assert!(std::sync::Arc::ptr_eq(&a, &again));
        for k in 0..SHELLS_KEPT {
            shells.get_or_make(&format!("k{k}"), make).unwrap();
        }
        assert_eq!(made.get(), 1 + SHELLS_KEPT);
        shells.get_or_make("a", make).unwrap();
        assert_eq!(made.get(), 2 + SHELLS_KEPT, "the oldest was let go");
    }

    #[test]
    fn lines_are_escaped_and_broken_in_html_and_kept_in_text() {
        let dir = sample_dir();
        write(dir.path(), "note/subject.hbs", "Note");
        write(dir.path(), "note/text.hbs", "{{lines body}}");
        write(dir.path(), "note/html.hbs", "<p>{{lines body}}</p>");
        let t = Templates::load(dir.path(), "http://x").unwrap();
        let body = "First <b>line</b>\r\nSecond & last\n";
        let r = t.render("note", &json!({ "body": body })).unwrap();
        assert_eq!(
            r.html,
            "<html><head></head><body><p>First &lt;b&gt;line&lt;/b&gt;<br>Second &amp; last<br></p></body></html>"
        );
        assert_eq!(r.text, "First <b>line</b>\nSecond & last\n");
        // Strict: a missing value is still an error.
        assert!(t.render("note", &json!({})).is_err());
    }

    #[test]
    fn a_missing_variable_is_an_error() {
        let dir = sample_dir();
        let t = Templates::load(dir.path(), "http://x").unwrap();
        let e = t.render("hello", &json!({})).unwrap_err();
        assert!(e.contains("hello/subject"), "{e}");
    }

    #[test]
    fn a_template_that_does_not_compile_is_named() {
        let dir = sample_dir();
        write(dir.path(), "broken/subject.hbs", "{{#if x}}never closed");
        let problems = Templates::load(dir.path(), "http://x").err().unwrap();
        assert!(
            problems[0].place.ends_with("broken/subject.hbs"),
            "{problems:?}"
        );
    }
}
