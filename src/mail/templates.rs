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
    /// The HTML part already encoded as quoted-printable with CRLF line ends: the body of the
    /// text/html part as it is sent (`Shell::fill_encoded`). When `Some`, `html` is left empty
    /// and the message is built from this.
    pub html_qp: Option<Vec<u8>>,
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
    /// `html` with each literal already quoted-printable encoded (`qp_piece`), for
    /// `fill_encoded`; None where a CRLF pair could straddle a hole, so that encoding the pieces
    /// one by one might not be encoding the whole.
    html_qp: Option<Vec<Piece>>,
    holes: usize,
}

/// The line length the encoder keeps each piece's lines to: one less than quoted-printable's 76,
/// leaving room for the soft line break that ends a piece.
const QP_PIECE_LINE: usize = 75;

/// Bare LF made CRLF, as lettre does to a text body before encoding it (a `\r` before every
/// `\n` not already after one).
fn crlf_line_ends(s: &str, out: &mut String) {
    let mut after_cr = false;
    for c in s.chars() {
        if c == '\n' && !after_cr {
            out.push('\r');
        }
        out.push(c);
        after_cr = c == '\r';
    }
}

/// Appends piece `s` of an HTML part as quoted-printable (CRLF line ends, text mode), ending
/// with a soft line break unless it ends a line, so that the next piece starts a line of its
/// own and no line is longer than 76.
fn qp_piece(s: &str, out: &mut String) {
    let mut crlf = String::with_capacity(s.len() + s.len() / 16);
    crlf_line_ends(s, &mut crlf);
    let encoded = quoted_printable::encode_with_options(
        crlf,
        quoted_printable::Options::default().line_length_limit(QP_PIECE_LINE),
    );
    out.push_str(&encoded);
    if !encoded.is_empty() && !encoded.ends_with("\r\n") {
        out.push_str("=\r\n");
    }
}

/// The HTML pieces with each literal encoded (see `Shell::html_qp`).
fn encode_pieces(html: &[Piece]) -> Option<Vec<Piece>> {
    let straddles = html.iter().any(|p| match p {
        Piece::Literal(l) => l.ends_with('\r') || l.starts_with('\n'),
        Piece::Hole(_) => false,
    });
    if straddles {
        return None;
    }
    let encoded = html
        .iter()
        .map(|p| match p {
            Piece::Literal(l) => {
                let mut out = String::with_capacity(l.len() + l.len() / 8);
                qp_piece(l, &mut out);
                Piece::Literal(out)
            }
            Piece::Hole(i) => Piece::Hole(*i),
        })
        .collect();
    Some(encoded)
}

/// The pieces joined: `put` writes the value of each hole.
fn join(pieces: &[Piece], values: &[&str], put: &dyn Fn(&str, &mut String)) -> String {
    let mut out = String::new();
    for p in pieces {
        match p {
            Piece::Literal(l) => out.push_str(l),
            Piece::Hole(i) => put(values.get(*i).copied().unwrap_or_default(), &mut out),
        }
    }
    out
}

impl Shell {
    fn new(subject: Vec<Piece>, text: Vec<Piece>, html: Vec<Piece>, holes: usize) -> Shell {
        Shell {
            html_qp: encode_pieces(&html),
            subject,
            text,
            html,
            holes,
        }
    }

    /// One copy: `values[i]` in hole `i`, HTML-escaped in the HTML part, folded to one line in
    /// the subject, as a whole rendering would have them.
    pub fn fill(&self, values: &[&str]) -> Result<Rendered, String> {
        if values.len() != self.holes {
            return Err(format!("{} values for {} holes", values.len(), self.holes));
        }
        let (subject, text) = self.subject_and_text(values);
        Ok(Rendered {
            subject,
            text,
            html: join(&self.html, values, &|v, out| escape_html(v, out)),
            html_qp: None,
        })
    }

    /// One copy as `fill` makes it, but with the HTML part already quoted-printable encoded
    /// (`Rendered::html_qp`, `html` empty): the shell's literals were encoded once, and only the
    /// values are encoded here. Exactly what `fill` returns if the shell has no encoded pieces or
    /// a value holds a CR or LF (which could pair up with a literal's line end).
    pub fn fill_encoded(&self, values: &[&str]) -> Result<Rendered, String> {
        let Some(html_qp) = &self.html_qp else {
            return self.fill(values);
        };
        if values.len() != self.holes || values.iter().any(|v| v.contains(['\r', '\n'])) {
            return self.fill(values);
        }
        let mut encoded = join(html_qp, values, &|v, out| {
            let mut escaped = String::with_capacity(v.len() + 8);
            escape_html(v, &mut escaped);
            qp_piece(&escaped, out);
        });
        // No piece follows the last one: its soft line break goes, and the part ends as one
        // encoding of the whole would (a strict decoder refuses a soft break at the very end).
        if encoded.ends_with("=\r\n") {
            encoded.truncate(encoded.len() - 3);
        }
        let (subject, text) = self.subject_and_text(values);
        Ok(Rendered {
            subject,
            text,
            html: String::new(),
            html_qp: Some(encoded.into_bytes()),
        })
    }

    /// The subject (each value folded to one line) and the plain text of a copy.
    fn subject_and_text(&self, values: &[&str]) -> (String, String) {
        (
            join(&self.subject, values, &|v, out| {
                out.push_str(&single_line(v))
            }),
            tidy_text(&join(&self.text, values, &|v, out| out.push_str(v))),
        )
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
    /// HTML parts CSS-inlined once per shape (`inline_by_shape`).
    shapes: Shapes,
}

/// Inlined shapes by the shape they were made from, a bounded number at a time.
#[derive(Default)]
struct Shapes {
    held: std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<Vec<Piece>>>>,
}

/// Shapes kept at most (each two copies of an HTML part, about 20 KB): more than the kinds
/// of email times the shapes each takes at once (a briefing's shape changes with its number of
/// registrants); when full, they are all dropped and made again as they come.
const SHAPES_KEPT: usize = 64;

impl Shapes {
    fn get(&self, shape: &str) -> Option<std::sync::Arc<Vec<Piece>>> {
        self.lock().get(shape).cloned()
    }

    fn put(&self, shape: String, inlined: Vec<Piece>) -> std::sync::Arc<Vec<Piece>> {
        let inlined = std::sync::Arc::new(inlined);
        let mut held = self.lock();
        if held.len() >= SHAPES_KEPT {
            held.clear();
        }
        held.insert(shape, inlined.clone());
        inlined
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, std::sync::Arc<Vec<Piece>>>>
    {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `v` with every non-empty string (but those under `site` at the top, which are the same for
/// every email) made a hole marker, its value pushed to `values`: the context of a shape. Empty
/// strings stay, so that `{{#if}}` takes the same branch. A string of several lines is a hole
/// for each line, the line ends kept (so that `{{lines}}` breaks it as it would the value).
fn mark_strings<'a>(v: &'a Value, values: &mut Vec<&'a str>, top: bool) -> Value {
    match v {
        Value::String(s) if !s.is_empty() => {
            let mut marked = String::new();
            for (i, line) in s.split('\n').enumerate() {
                if i > 0 {
                    marked.push('\n');
                }
                let (line, cr) = match line.strip_suffix('\r') {
                    Some(line) => (line, "\r"),
                    None => (line, ""),
                };
                if !line.is_empty() {
                    values.push(line);
                    marked.push_str(&hole_marker(values.len() - 1));
                }
                marked.push_str(cr);
            }
            Value::String(marked)
        }
        Value::Array(a) => Value::Array(a.iter().map(|v| mark_strings(v, values, false)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| {
                    let v = if top && k == "site" {
                        v.clone()
                    } else {
                        mark_strings(v, values, false)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Attributes a value may be written into for its part to be inlined by shape: none that a
/// style's selector could match on (class, id, style, data-…), so that the styles each element
/// gets do not depend on the values.
const SHAPE_SAFE_ATTRIBUTES: &[&str] = &["href", "src", "alt", "title"];

/// Whether a hole of `shape` lies inside a tag other than in one of `SHAPE_SAFE_ATTRIBUTES`.
fn holes_in_styled_attributes(shape: &str) -> bool {
    shape.match_indices(HOLE_OPEN).any(|(at, _)| {
        let before = &shape[..at];
        let in_tag = match (before.rfind('<'), before.rfind('>')) {
            (Some(lt), Some(gt)) => lt > gt,
            (Some(_), None) => true,
            _ => false,
        };
        if !in_tag {
            return false;
        }
        let tag = &before[before.rfind('<').unwrap_or(0)..];
        // The attribute the hole is in: the name before the last `=`.
        let Some(eq) = tag.rfind('=') else {
            return true;
        };
        let name = tag[..eq]
            .trim_end()
            .rsplit(|c: char| c.is_whitespace())
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        !SHAPE_SAFE_ATTRIBUTES.contains(&name.as_str())
    })
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
            shapes: Shapes::default(),
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
        self.render_traced(name, context, true)
            .map(|(rendered, _)| rendered)
    }

    /// Renders as `render` does; with `by_shape` false, always inlining the whole HTML part.
    /// Also says whether the part came from an inlined shape (`inline_by_shape`). For tests,
    /// which check that both ways give the same email.
    #[doc(hidden)]
    pub fn render_traced(
        &self,
        name: &str,
        context: &Value,
        by_shape: bool,
    ) -> Result<(Rendered, bool), String> {
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
        let shaped = by_shape
            .then(|| self.inline_by_shape(name, &data, &html))
            .flatten();
        let was_shaped = shaped.is_some();
        let html = match shaped {
            Some(inlined) => inlined,
            None => css_inline::inline(&html)
                .map_err(|e| format!("{name}/html: CSS inlining failed: {e}"))?,
        };
        let rendered = Rendered {
            subject,
            text: tidy_text(&text),
            html,
            html_qp: None,
        };
        Ok((rendered, was_shaped))
    }

    /// The HTML part `html` (email `name` rendered with `data`) with its CSS inlined, from an
    /// inlining of the same shape made before: the part rendered with a hole for every string
    /// value, which is the same for every reminder of a session, every acknowledgement, and so
    /// on. None (inline it whole) if the template does more with a value than write it escaped
    /// (so that the part is not its shape filled), or writes one into an attribute that styles
    /// could select on.
    fn inline_by_shape(&self, name: &str, data: &Value, html: &str) -> Option<String> {
        if holds_marker(data) {
            return None;
        }
        let mut values = Vec::new();
        let marked = mark_strings(data, &mut values, true);
        let shape = self.html.render(&format!("{name}/html"), &marked).ok()?;
        let shape_pieces = pieces(&shape);
        let filled = join(&shape_pieces, &values, &|v, out| {
            out.push_str(&handlebars::html_escape(v))
        });
        if filled != html {
            return None;
        }
        let inlined = match self.shapes.get(&shape) {
            // Kept only once it passed the checks below.
            Some(inlined) => inlined,
            None => {
                if holes_in_styled_attributes(&shape) {
                    return None;
                }
                let inlined = pieces(&css_inline::inline(&shape).ok()?);
                let holes =
                    |ps: &[Piece]| ps.iter().filter(|p| matches!(p, Piece::Hole(_))).count();
                // Every hole came through the inlining as it went in.
                if holes(&inlined) != holes(&shape_pieces) {
                    return None;
                }
                self.shapes.put(shape, inlined)
            }
        };
        Some(join(&inlined, &values, &|v, out| escape_html(v, out)))
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
        Ok(Some(Shell::new(
            pieces(&rendered.subject),
            pieces(&rendered.text),
            pieces(&rendered.html),
            holes.len(),
        )))
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

    /// The sample templates (and the directory they were loaded from) and the "hello" shell
    /// with one hole, for the name.
    fn sample_shell() -> (tempfile::TempDir, Templates, Shell) {
        let dir = sample_dir();
        let t = Templates::load(dir.path(), "http://x").unwrap();
        let shell = t
            .shell("hello", &json!({"name": "x"}), &["name"])
            .unwrap()
            .expect("a shell");
        (dir, t, shell)
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

    /// Templates whose values go into a class (which styles select on) and into a link.
    fn attribute_templates() -> (tempfile::TempDir, Templates) {
        let dir = sample_dir();
        write(dir.path(), "layout/html.hbs", "<html><head><style>.warn { color: red } a { color: blue }</style></head><body>{{> @partial-block}}</body></html>");
        for name in ["classy", "linky"] {
            write(dir.path(), &format!("{name}/subject.hbs"), "S");
            write(dir.path(), &format!("{name}/text.hbs"), "T");
        }
        write(
            dir.path(),
            "classy/html.hbs",
            "{{#> layout/html}}<p class=\"{{kind}}\">Hi {{name}}</p>{{/layout/html}}",
        );
        write(
            dir.path(),
            "linky/html.hbs",
            "{{#> layout/html}}<p>Hi {{name}}, <a href=\"{{url}}\">here</a></p>{{/layout/html}}",
        );
        let t = Templates::load(dir.path(), "http://x").unwrap();
        (dir, t)
    }

    #[test]
    fn a_value_in_an_attribute_styles_select_on_is_inlined_whole() {
        let (_dir, t) = attribute_templates();
        for _ in 0..2 {
            let (r, shaped) = t
                .render_traced("classy", &json!({"kind": "warn", "name": "Sam"}), true)
                .unwrap();
            assert!(!shaped);
            assert!(
                r.html
                    .contains("<p class=\"warn\" style=\"color: red;\">Hi Sam</p>"),
                "{}",
                r.html
            );
            let (r, _) = t
                .render_traced("classy", &json!({"kind": "calm", "name": "Sam"}), true)
                .unwrap();
            assert!(
                r.html.contains("<p class=\"calm\">Hi Sam</p>"),
                "{}",
                r.html
            );
        }
    }

    #[test]
    fn values_in_text_and_links_are_filled_into_one_inlined_shape() {
        let (_dir, t) = attribute_templates();
        let (first, shaped) = t
            .render_traced(
                "linky",
                &json!({"name": "Sam", "url": "https://x.example/a?b=1&c=2"}),
                true,
            )
            .unwrap();
        assert!(shaped);
        assert!(
            first.html.contains("<p>Hi Sam, <a href=\"https://x.example/a?b=1&amp;c=2\" style=\"color: blue;\">here</a></p>"),
            "{}",
            first.html
        );
        let (second, shaped) = t
            .render_traced(
                "linky",
                &json!({"name": "Kim <b>", "url": "https://y.example/\""}),
                true,
            )
            .unwrap();
        assert!(shaped);
        assert!(
            second.html.contains("<p>Hi Kim &lt;b&gt;, <a href=\"https://y.example/&quot;\" style=\"color: blue;\">here</a></p>"),
            "{}",
            second.html
        );
        assert_eq!(t.shapes.lock().len(), 1, "one shape for both");
    }

    #[test]
    fn a_filled_shell_is_the_whole_rendering() {
        let (_dir, t, shell) = sample_shell();
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

    /// `html` with lettre's line ends: every LF that is not already after a CR made CRLF.
    fn crlf(html: &str) -> String {
        html.replace("\r\n", "\n").replace('\n', "\r\n")
    }

    /// A copy from `fill_encoded` is the copy from `fill` with its HTML part encoded: the same
    /// subject and text, an HTML part that decodes (strictly) to `fill`'s with CRLF line ends,
    /// all ASCII, in CRLF lines of at most 76 bytes.
    fn encoded_is_filled(shell: &Shell, values: &[&str]) -> Result<(), String> {
        let filled = shell.fill(values)?;
        let encoded = shell.fill_encoded(values)?;
        if (&encoded.subject, &encoded.text) != (&filled.subject, &filled.text) {
            return Err(format!("subject or text differ: {encoded:?} {filled:?}"));
        }
        if !encoded.html.is_empty() {
            return Err(format!("html is not left empty: {:?}", encoded.html));
        }
        let qp = encoded.html_qp.ok_or("no encoded HTML")?;
        let shown = String::from_utf8_lossy(&qp).into_owned();
        if !qp.is_ascii() {
            return Err(format!("not ASCII: {shown:?}"));
        }
        for (i, b) in qp.iter().enumerate() {
            let crlf_pair = match b {
                b'\r' => qp.get(i + 1) == Some(&b'\n'),
                b'\n' => i > 0 && qp[i - 1] == b'\r',
                _ => true,
            };
            if !crlf_pair {
                return Err(format!("a bare CR or LF at {i}: {shown:?}"));
            }
        }
        if let Some(line) = shown.split("\r\n").find(|l| l.len() > 76) {
            return Err(format!("a line of {} bytes: {line:?}", line.len()));
        }
        let decoded = quoted_printable::decode(&qp, quoted_printable::ParseMode::Strict)
            .map_err(|e| format!("{e:?} in {shown:?}"))?;
        let expected = crlf(&filled.html);
        if decoded != expected.as_bytes() {
            return Err(format!(
                "decoded {:?}, filled {expected:?}, encoded {shown:?}",
                String::from_utf8_lossy(&decoded)
            ));
        }
        Ok(())
    }

    #[test]
    fn an_encoded_copy_decodes_to_the_filled_copy() {
        let (_dir, _, shell) = sample_shell();
        assert!(shell.html_qp.is_some(), "the sample shell is encoded");
        let long = "a".repeat(150) + &"é=".repeat(50) + &"b".repeat(50);
        assert_eq!(long.chars().count(), 300);
        for value in [
            "Zoë",
            "<b>&\"",
            long.as_str(),
            "=",
            "x   ",
            "x\t",
            "",
            "Sam",
            "https://x.example/u?t=a&b=c",
        ] {
            encoded_is_filled(&shell, &[value]).unwrap();
        }
        // Each piece ends with a soft line break (a space before it encoded, as at a line's end).
        let encoded = shell.fill_encoded(&["Sam"]).unwrap().html_qp.unwrap();
        let encoded = String::from_utf8(encoded).unwrap();
        assert!(encoded.contains("Hi=20=\r\nSam=\r\n</p>"), "{encoded}");
        assert!(encoded.ends_with("</html>"), "{encoded}");
        assert!(shell.fill_encoded(&[]).is_err());
    }

    #[test]
    fn a_value_with_a_line_break_or_a_straddling_line_end_is_filled_unencoded() {
        let (_dir, _, shell) = sample_shell();
        for value in ["a\r\nb", "a\nb", "a\r", "\nb"] {
            let copy = shell.fill_encoded(&[value]).unwrap();
            assert_eq!(copy, shell.fill(&[value]).unwrap(), "{value:?}");
            assert_eq!(copy.html_qp, None);
        }
        for html in [
            vec![Piece::Literal("a\r".into()), Piece::Hole(0)],
            vec![Piece::Hole(0), Piece::Literal("\nb".into())],
        ] {
            let shell = Shell::new(Vec::new(), Vec::new(), html, 1);
            assert_eq!(shell.html_qp, None);
            assert_eq!(
                shell.fill_encoded(&["x"]).unwrap(),
                shell.fill(&["x"]).unwrap()
            );
        }
    }

    fn html_literal() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        proptest::collection::vec(
            prop_oneof![
                Just(" ".to_owned()),
                Just("   ".to_owned()),
                Just("\t".to_owned()),
                Just("=".to_owned()),
                Just("\n".to_owned()),
                Just("\r\n".to_owned()),
                Just("é".to_owned()),
                Just("€ Zoë".to_owned()),
                Just("<p style=\"color: red;\">".to_owned()),
                Just("</p>\n".to_owned()),
                "[a-z]{1,200}",
                "[ a-z=<>&\"]{1,40}",
            ],
            0..12,
        )
        .prop_map(|parts| parts.concat())
    }

    fn html_piece() -> impl proptest::strategy::Strategy<Value = Piece> {
        use proptest::prelude::*;
        prop_oneof![
            html_literal().prop_map(Piece::Literal),
            (0..3usize).prop_map(Piece::Hole),
        ]
    }

    proptest::proptest! {
        #[test]
        fn any_encoded_copy_decodes_to_the_filled_copy(
            html in proptest::collection::vec(html_piece(), 0..10),
            values in proptest::collection::vec(
                proptest::prop_oneof!["[^\r\n]{0,100}", "[a-z= ]{0,300}", "[ é=]{0,20}"],
                3,
            ),
        ) {
            let straddles = html.iter().any(|p| {
                matches!(p, Piece::Literal(l) if l.ends_with('\r') || l.starts_with('\n'))
            });
            let shell = Shell::new(Vec::new(), Vec::new(), html, 3);
            let values: Vec<&str> = values.iter().map(String::as_str).collect();
            if straddles {
                proptest::prop_assert_eq!(&shell.html_qp, &None);
                proptest::prop_assert_eq!(
                    shell.fill_encoded(&values).unwrap(),
                    shell.fill(&values).unwrap()
                );
            } else {
                let checked = encoded_is_filled(&shell, &values);
                proptest::prop_assert!(checked.is_ok(), "{}", checked.unwrap_err());
            }
        }
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
