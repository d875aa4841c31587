//! Newsletter markdown, turned into the HTML and the plain text of an email.
//!
//! The markdown comes from the website (coordinators write it), so it is treated as untrusted:
//!
//! - raw HTML in it (blocks and inline tags) is shown as text, escaped, never passed through;
//! - links keep their text and their destination only when it is `https`, `http` or `mailto`
//!   (a `javascript:` link becomes plain text);
//! - images become links to the image: remote images in email are blocked by many clients and
//!   can track readers;
//! - headings are moved two levels down, below the section's own heading (`#` becomes `<h3>`);
//! - quotes and lists nested deeper than [`MAX_NESTING`] are flattened into the level above, not
//!   refused: the plain text writes every open prefix on every line, and quotes nested a few
//!   thousand deep with many lazy lines once made gigabytes of it from 100 KiB of markdown. With
//!   the cap, the output is at most a fixed multiple of the input.

use pulldown_cmark::{Event, HeadingLevel, Options, Parser, Tag, TagEnd};

/// Quotes and lists nested deeper than this are flattened (no email reader needs more).
pub const MAX_NESTING: usize = 8;

/// One section's body in both forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub html: String,
    pub text: String,
}

pub fn render(markdown: &str) -> Rendered {
    Rendered {
        html: to_html(markdown),
        text: to_text(markdown),
    }
}

fn parser(markdown: &str) -> Parser<'_> {
    Parser::new_ext(
        markdown,
        Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TASKLISTS,
    )
}

/// Whether a link destination may be kept.
fn safe_link(url: &str) -> bool {
    let lower = url.trim().to_ascii_lowercase();
    lower.starts_with("https://") || lower.starts_with("http://") || lower.starts_with("mailto:")
}

fn lower_heading(level: HeadingLevel) -> HeadingLevel {
    match level {
        HeadingLevel::H1 => HeadingLevel::H3,
        HeadingLevel::H2 => HeadingLevel::H4,
        HeadingLevel::H3 => HeadingLevel::H5,
        _ => HeadingLevel::H6,
    }
}

/// The events, made safe for HTML output (see the module documentation).
fn safe_events(markdown: &str) -> Vec<Event<'_>> {
    // For each open link or image: whether its start was kept (so its end is kept too).
    let mut links: Vec<bool> = Vec::new();
    // Open quotes, lists and list items: (whether it is a quote or list, whether it was kept).
    // Quotes and lists deeper than MAX_NESTING are flattened, with their items.
    let mut containers: Vec<(bool, bool)> = Vec::new();
    let mut out = Vec::new();
    for event in parser(markdown) {
        let event = match event {
            Event::Start(tag @ (Tag::BlockQuote(_) | Tag::List(_))) => {
                let depth = containers
                    .iter()
                    .filter(|(nests, kept)| *nests && *kept)
                    .count();
                let keep = depth < MAX_NESTING;
                containers.push((true, keep));
                if !keep {
                    continue;
                }
                Event::Start(tag)
            }
            Event::Start(Tag::Item) => {
                let keep = containers.last().is_none_or(|(_, kept)| *kept);
                containers.push((false, keep));
                if !keep {
                    // A flattened item still reads as one.
                    out.push(Event::HardBreak);
                    out.push(Event::Text("• ".into()));
                    continue;
                }
                Event::Start(Tag::Item)
            }
            Event::End(tag @ (TagEnd::BlockQuote(_) | TagEnd::List(_) | TagEnd::Item)) => {
                if !containers.pop().is_none_or(|(_, kept)| kept) {
                    continue;
                }
                Event::End(tag)
            }
            Event::Html(s) | Event::InlineHtml(s) => Event::Text(s),
            Event::Start(Tag::HtmlBlock) => Event::Start(Tag::Paragraph),
            Event::End(TagEnd::HtmlBlock) => Event::End(TagEnd::Paragraph),
            Event::Start(Tag::Heading { level, .. }) => Event::Start(Tag::Heading {
                level: lower_heading(level),
                id: None,
                classes: Vec::new(),
                attrs: Vec::new(),
            }),
            Event::End(TagEnd::Heading(level)) => Event::End(TagEnd::Heading(lower_heading(level))),
            Event::Start(Tag::Link {
                link_type,
                dest_url,
                title,
                id,
            })
            | Event::Start(Tag::Image {
                link_type,
                dest_url,
                title,
                id,
            }) => {
                let keep = safe_link(&dest_url);
                links.push(keep);
                if !keep {
                    continue;
                }
                Event::Start(Tag::Link {
                    link_type,
                    dest_url,
                    title,
                    id,
                })
            }
            Event::End(TagEnd::Link) | Event::End(TagEnd::Image) => {
                if !links.pop().unwrap_or(false) {
                    continue;
                }
                Event::End(TagEnd::Link)
            }
            other => other,
        };
        out.push(event);
    }
    out
}

fn to_html(markdown: &str) -> String {
    let mut html = String::with_capacity(markdown.len() * 3 / 2);
    pulldown_cmark::html::push_html(&mut html, safe_events(markdown).into_iter());
    html
}

/// What separates the next text from what came before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Gap {
    None,
    Line,
    Blank,
}

/// Plain text being written: blocks separated by blank lines, with prefixes ("> " for quotes,
/// indentation under list items) at the start of every line.
struct TextOut {
    out: String,
    gap: Gap,
    /// How many prefixes were open when the gap was asked for: a blank line before a quote
    /// belongs outside it.
    gap_depth: usize,
    prefixes: Vec<String>,
    /// A list marker ("- ", "2. ") to write in place of the innermost prefix on the next line.
    marker: Option<String>,
    /// Open lists: the next number of an ordered one.
    lists: Vec<Option<u64>>,
    /// Open links: (destination if kept, where its text starts in `out`).
    links: Vec<(Option<String>, usize)>,
    /// Text of the heading being read, written underlined at its end.
    heading: Option<String>,
    /// Whether the next table cell is the first of its row.
    first_cell: bool,
}

impl TextOut {
    fn new() -> Self {
        TextOut {
            out: String::new(),
            gap: Gap::None,
            gap_depth: usize::MAX,
            prefixes: Vec::new(),
            marker: None,
            lists: Vec::new(),
            links: Vec::new(),
            heading: None,
            first_cell: true,
        }
    }

    /// Opens a quote, code block or list item. Past MAX_NESTING open prefixes the new level
    /// adds none (it is flattened into the one above), so no line carries more than a bounded
    /// prefix however deep the markdown nests.
    fn push_prefix(&mut self, prefix: String) {
        let open = self.prefixes.iter().filter(|p| !p.is_empty()).count();
        self.prefixes.push(if open < MAX_NESTING {
            prefix
        } else {
            String::new()
        });
    }

    fn gap(&mut self, gap: Gap) {
        self.gap = self.gap.max(gap);
        self.gap_depth = self.gap_depth.min(self.prefixes.len());
    }

    fn line_prefix(&mut self) -> String {
        let mut prefix: String = self.prefixes.concat();
        if let Some(marker) = self.marker.take() {
            let inner = self.prefixes.last().map_or(0, String::len);
            prefix.truncate(prefix.len() - inner);
            prefix.push_str(&marker);
        }
        prefix
    }

    /// Writes what separates the coming text from the text before it.
    fn open_line(&mut self) {
        let gap = std::mem::replace(&mut self.gap, Gap::None);
        let depth = std::mem::replace(&mut self.gap_depth, usize::MAX).min(self.prefixes.len());
        if self.out.is_empty() {
            let prefix = self.line_prefix();
            self.out.push_str(&prefix);
            return;
        }
        if gap == Gap::None && self.marker.is_none() {
            return;
        }
        self.out.push('\n');
        if gap == Gap::Blank {
            self.out
                .push_str(self.prefixes[..depth].concat().trim_end());
            self.out.push('\n');
        }
        let prefix = self.line_prefix();
        self.out.push_str(&prefix);
    }

    fn write(&mut self, s: &str) {
        if let Some(h) = self.heading.as_mut() {
            h.push_str(s);
            return;
        }
        for (i, line) in s.split('\n').enumerate() {
            if i > 0 {
                self.gap(Gap::Line);
            }
            if !line.is_empty() {
                self.open_line();
                self.out.push_str(line);
            }
        }
    }

    fn event(&mut self, event: Event<'_>) {
        match event {
            Event::Start(tag) => self.start(tag),
            Event::End(tag) => self.end(tag),
            Event::Text(s) | Event::Code(s) | Event::InlineMath(s) | Event::DisplayMath(s) => {
                self.write(&s)
            }
            // Raw HTML is only text here: a plain-text part runs nothing.
            Event::Html(s) | Event::InlineHtml(s) => self.write(&s),
            Event::SoftBreak | Event::HardBreak => self.write("\n"),
            Event::Rule => {
                self.gap(Gap::Blank);
                self.write("----------");
                self.gap(Gap::Blank);
            }
            Event::TaskListMarker(done) => self.write(if done { "[x] " } else { "[ ] " }),
            Event::FootnoteReference(name) => self.write(&format!("[{name}]")),
        }
    }

    fn start(&mut self, tag: Tag<'_>) {
        match tag {
            Tag::Paragraph | Tag::HtmlBlock | Tag::Table(_) | Tag::MetadataBlock(_) => {
                self.gap(Gap::Blank)
            }
            Tag::Heading { .. } => {
                self.gap(Gap::Blank);
                self.heading = Some(String::new());
            }
            Tag::BlockQuote(_) => {
                self.gap(Gap::Blank);
                self.push_prefix("> ".into());
            }
            Tag::CodeBlock(_) => {
                self.gap(Gap::Blank);
                self.push_prefix("    ".into());
            }
            Tag::List(start) => {
                self.gap(if self.lists.is_empty() {
                    Gap::Blank
                } else {
                    Gap::Line
                });
                self.lists.push(start);
            }
            Tag::Item => {
                self.gap(Gap::Line);
                let marker = match self.lists.last_mut() {
                    Some(Some(n)) => {
                        let m = format!("{n}. ");
                        *n += 1;
                        m
                    }
                    _ => "- ".to_string(),
                };
                self.push_prefix(" ".repeat(marker.len()));
                self.marker = Some(marker);
            }
            Tag::TableHead | Tag::TableRow => {
                self.gap(Gap::Line);
                self.first_cell = true;
            }
            Tag::TableCell => {
                if !self.first_cell {
                    self.write(" | ");
                }
                self.first_cell = false;
            }
            Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. } => {
                let kept = safe_link(&dest_url).then(|| dest_url.to_string());
                self.links.push((kept, self.out.len()));
            }
            Tag::FootnoteDefinition(name) => {
                self.gap(Gap::Blank);
                self.write(&format!("[{name}] "));
            }
            Tag::DefinitionList => self.gap(Gap::Blank),
            Tag::DefinitionListTitle | Tag::DefinitionListDefinition => self.gap(Gap::Line),
            Tag::Emphasis
            | Tag::Strong
            | Tag::Strikethrough
            | Tag::Superscript
            | Tag::Subscript => {}
        }
    }

    fn end(&mut self, tag: TagEnd) {
        match tag {
            TagEnd::Paragraph
            | TagEnd::HtmlBlock
            | TagEnd::Table
            | TagEnd::MetadataBlock(_)
            | TagEnd::FootnoteDefinition
            | TagEnd::DefinitionList => self.gap(Gap::Blank),
            TagEnd::Heading(_) => {
                let title = self.heading.take().unwrap_or_default();
                let title = title.trim();
                self.write(title);
                self.gap(Gap::Line);
                self.write(&"-".repeat(title.chars().count()));
                self.gap(Gap::Blank);
            }
            TagEnd::BlockQuote(_) | TagEnd::CodeBlock => {
                self.prefixes.pop();
                self.gap(Gap::Blank);
            }
            TagEnd::List(_) => {
                self.lists.pop();
                self.gap(if self.lists.is_empty() {
                    Gap::Blank
                } else {
                    Gap::Line
                });
            }
            TagEnd::Item => {
                self.prefixes.pop();
                self.marker = None;
            }
            TagEnd::Link | TagEnd::Image => {
                if let Some((Some(url), start)) = self.links.pop() {
                    let text = self.out.get(start..).unwrap_or_default().trim().to_owned();
                    let shown = url.strip_prefix("mailto:").unwrap_or(&url);
                    if text != shown && text != url {
                        self.write(&format!(" ({url})"));
                    }
                }
            }
            TagEnd::TableHead
            | TagEnd::TableRow
            | TagEnd::TableCell
            | TagEnd::DefinitionListTitle
            | TagEnd::DefinitionListDefinition
            | TagEnd::Emphasis
            | TagEnd::Strong
            | TagEnd::Strikethrough
            | TagEnd::Superscript
            | TagEnd::Subscript => {}
        }
    }
}

fn to_text(markdown: &str) -> String {
    let mut w = TextOut::new();
    for event in parser(markdown) {
        w.event(event);
    }
    w.out.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What one render may write at most for `input` bytes: a fixed multiple, whatever the
    /// markdown (the cap on nesting is what makes it fixed).
    fn bound(input: usize) -> usize {
        64 * input + 4096
    }

    #[test]
    fn quotes_nested_thousands_deep_with_lazy_lines_stay_small() {
        // Each lazy line continues the innermost quote: without the cap, the text part wrote
        // every one of the 5,000 "> " prefixes on each of the 5,000 lines (50 MB from 40 KB).
        let markdown = format!("{} start\n{}", ">".repeat(5000), "lazy line\n".repeat(5000));
        let out = render(&markdown);
        assert!(out.text.len() + out.html.len() <= bound(markdown.len()));
        let deepest = out.text.lines().map(|l| l.matches("> ").count()).max();
        assert_eq!(deepest, Some(MAX_NESTING));
        assert_eq!(out.html.matches("<blockquote>").count(), MAX_NESTING);
        assert!(out.text.contains("lazy line"), "flattened, not dropped");
        assert!(out.html.contains("lazy line"));
    }

    #[test]
    fn lists_nested_deeper_than_the_cap_are_flattened_with_their_items() {
        let mut markdown = String::new();
        for depth in 0..(MAX_NESTING + 4) {
            markdown.push_str(&format!("{}- level {depth}\n", "  ".repeat(depth)));
        }
        let out = render(&markdown);
        assert_eq!(out.html.matches("<ul>").count(), MAX_NESTING);
        assert_eq!(
            out.html.matches("<ul>").count(),
            out.html.matches("</ul>").count()
        );
        assert_eq!(
            out.html.matches("<li>").count(),
            out.html.matches("</li>").count()
        );
        for depth in 0..(MAX_NESTING + 4) {
            let item = format!("level {depth}");
            assert!(out.html.contains(&item), "{item} in the HTML");
            assert!(out.text.contains(&item), "{item} in the text");
        }
    }

    /// Markdown-ish input: the characters that open and close blocks and inlines, and words.
    fn markdownish() -> impl Strategy<Value = String> {
        let pieces = prop::sample::select(vec![
            ">",
            "> ",
            "-",
            "- ",
            "* ",
            "+ ",
            "1. ",
            "10) ",
            " ",
            "  ",
            "    ",
            "\n",
            "\n\n",
            "#",
            "## ",
            "[",
            "]",
            "(",
            ")",
            "](https://e.org/x)",
            "](javascript:alert(1))",
            "<",
            ">",
            "<b>",
            "</b>",
            "<script>",
            "`",
            "```",
            "|",
            "-|-",
            "!",
            "_",
            "*",
            "~~",
            "word",
            "é",
            "\u{202e}",
            "&amp;",
            "\\",
            "---",
            "[^1]",
            "[^1]: note",
        ]);
        prop::collection::vec(pieces, 0..400).prop_map(|v| v.concat())
    }

    proptest! {
        // 256 cases by default (`make test`); `make faults` sets PROPTEST_CASES for a long run.
        #[test]
        fn any_markdown_renders_without_panicking_within_a_fixed_multiple(md in markdownish()) {
            let out = render(&md);
            prop_assert!(out.html.len() + out.text.len() <= bound(md.len()),
                "{} bytes in, {} out", md.len(), out.html.len() + out.text.len());
            prop_assert!(!out.html.contains("<script"));
            prop_assert!(!out.html.to_ascii_lowercase().contains("href=\"javascript"));
        }
    }

    #[test]
    fn the_example_newsletter_reads_well_in_both_forms() {
        let r = render(
            "Providers have reported an increase in **online** radicalisation concerns.\n\n- Review filtering and monitoring\n- Brief staff on reporting routes",
        );
        assert_eq!(
            r.html,
            "<p>Providers have reported an increase in <strong>online</strong> radicalisation concerns.</p>\n<ul>\n<li>Review filtering and monitoring</li>\n<li>Brief staff on reporting routes</li>\n</ul>\n"
        );
        assert_eq!(
            r.text,
            "Providers have reported an increase in online radicalisation concerns.\n\n- Review filtering and monitoring\n- Brief staff on reporting routes"
        );
    }

    #[test]
    fn links_are_kept_with_their_address_in_the_text() {
        let r = render("Book a place on [DSL training](https://www.eventbrite.co.uk/e/1?a=1&b=2) now. Or write to <mailto:rpec@example.org>.");
        assert!(
            r.html.contains(
                "<a href=\"https://www.eventbrite.co.uk/e/1?a=1&amp;b=2\">DSL training</a>"
            ),
            "{}",
            r.html
        );
        assert_eq!(
            r.text,
            "Book a place on DSL training (https://www.eventbrite.co.uk/e/1?a=1&b=2) now. Or write to mailto:rpec@example.org."
        );
    }

    /// http and mailto links are kept as well as https ones; a mail link whose text is the
    /// address is not followed by the address again.
    #[test]
    fn http_and_mailto_links_are_kept_too() {
        let r = render("See [the old page](http://example.org/old) or [write to us](mailto:rpec@example.org) at [rpec@example.org](mailto:rpec@example.org).");
        assert_eq!(
            r.html,
            "<p>See <a href=\"http://example.org/old\">the old page</a> or <a href=\"mailto:rpec@example.org\">write to us</a> at <a href=\"mailto:rpec@example.org\">rpec@example.org</a>.</p>\n"
        );
        assert_eq!(
            r.text,
            "See the old page (http://example.org/old) or write to us (mailto:rpec@example.org) at rpec@example.org."
        );
    }

    #[test]
    fn raw_html_and_scripts_are_escaped_not_passed_through() {
        let r = render("<script>alert('x')</script>\n\nHello <b onclick=\"steal()\">there</b> <img src=x onerror=alert(1)>\n\n<div>\n<iframe src=\"https://evil.example\"></iframe>\n</div>");
        assert!(!r.html.contains("<script"), "{}", r.html);
        assert!(!r.html.contains("<b "), "{}", r.html);
        assert!(!r.html.contains("<img"), "{}", r.html);
        assert!(!r.html.contains("<iframe"), "{}", r.html);
        assert!(!r.html.contains("<div"), "{}", r.html);
        assert!(
            r.html.contains("&lt;script&gt;alert('x')&lt;/script&gt;"),
            "{}",
            r.html
        );
        assert!(
            r.html
                .contains("Hello &lt;b onclick=\"steal()\"&gt;there&lt;/b&gt;"),
            "{}",
            r.html
        );
        assert!(r.text.starts_with("<script>alert('x')</script>\n\nHello"));
    }

    #[test]
    fn unsafe_links_become_text_and_images_become_links() {
        let r = render("[click](javascript:alert(1)) and ![a chart](https://example.org/c.png) and [rel](/local)");
        assert_eq!(
            r.html,
            "<p>click and <a href=\"https://example.org/c.png\">a chart</a> and rel</p>\n"
        );
        assert_eq!(
            r.text,
            "click and a chart (https://example.org/c.png) and rel"
        );
    }

    #[test]
    fn headings_sit_below_the_section_heading() {
        let r = render("# Big\n\nText\n\n## Smaller");
        assert_eq!(r.html, "<h3>Big</h3>\n<p>Text</p>\n<h4>Smaller</h4>\n");
        assert_eq!(r.text, "Big\n---\n\nText\n\nSmaller\n-------");
    }

    /// Tables, strikethrough and task lists are read as such (coordinators write them), in
    /// both forms; a table's cells are separated by " | " in the text.
    #[test]
    fn tables_strikethrough_and_task_lists_are_markdown_too() {
        let r = render("| Date | Place |\n| --- | --- |\n| 2 Oct | Online |\n");
        assert_eq!(
            r.html,
            "<table><thead><tr><th>Date</th><th>Place</th></tr></thead><tbody>\n<tr><td>2 Oct</td><td>Online</td></tr>\n</tbody></table>\n"
        );
        assert_eq!(r.text, "Date | Place\n2 Oct | Online");
        let r = render("~~old~~ new");
        assert_eq!(r.html, "<p><del>old</del> new</p>\n");
        let r = render("- [x] done\n- [ ] to do");
        assert_eq!(r.html.matches("type=\"checkbox\"").count(), 2, "{}", r.html);
        assert_eq!(r.text, "- [x] done\n- [ ] to do");
    }

    /// Every heading level sits two below its own, down to the last one HTML has.
    #[test]
    fn deeper_headings_move_down_too_and_stop_at_h6() {
        let r = render("### Three\n\n#### Four\n\n##### Five");
        assert_eq!(r.html, "<h5>Three</h5>\n<h6>Four</h6>\n<h6>Five</h6>\n");
    }

    #[test]
    fn nested_lists_quotes_and_code_are_indented() {
        let r = render(
            "1. one\n2. two\n   - a\n   - b\n3. three\n\n> quoted\n> still\n\n    code line\n\nend",
        );
        assert_eq!(
            r.text,
            "1. one\n2. two\n   - a\n   - b\n3. three\n\n> quoted\n> still\n\n    code line\n\nend"
        );
    }
}
