//! Handlebars templates. Each email `NAME` is three files: `NAME/subject.hbs`, `NAME/text.hbs`
//! and `NAME/html.hbs`; the last two usually wrap themselves in the shared layouts
//! (`{{#> layout/html}}...{{/layout/html}}`). HTML is rendered with HTML escaping of every value;
//! subjects and text without, and subjects are folded to one line so that no CR or LF can reach
//! the header. Strict mode: a missing variable is an error, which `check` finds by rendering
//! every email with sample data built from the same types the handlers use.

use crate::config::Problem;
use crate::domain::single_line;
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
        let mut text = Handlebars::new();
        text.set_strict_mode(true);
        text.register_escape_fn(handlebars::no_escape);
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
