//! What a message that came back to a return path says: a bounce (for good or for now), a
//! complaint, an automatic notice, or something an operator has to read.
//!
//! Pure code, no I/O: [`interpret`] takes the received bytes and a way to recognise our own VERP
//! return paths, and gives a [`Report`]. MIME is `mail-parser`'s; the delivery status notices
//! (RFC 3464, RFC 6533) and feedback reports (RFC 5965) are read here, because `mail-parser`
//! hands those parts over as opaque bytes.
//!
//! The order of the checks matters:
//!
//! 1. a delivery status notice (`message/delivery-status`, `message/global-delivery-status`, or
//!    a text/plain status part inside a `multipart/report`) with at least one usable recipient
//!    block;
//! 2. a feedback report (`message/feedback-report`) with a `Feedback-Type`;
//! 3. a bounce that is not a report (Exim's classic one, qmail's, Gmail's plain text) and quotes
//!    an SMTP reply;
//! 4. an automatic reply (out of office and the like);
//! 5. anything else is [`Kind::Unparsed`], for an operator.
//!
//! Reports come before automatic replies because real bounces carry `Auto-Submitted:
//! auto-replied` too (Postfix's and Exim's do).
//!
//! A permanent failure is [`Kind::Hard`] only when it is about the address: policy and security
//! refusals (enhanced status subject 7: DMARC, spam blocks), a full mailbox (x.2.2) and a message
//! too big (x.3.4) are the sender's or the moment's problem, so they are [`Kind::Soft`]. A false
//! Hard stops a real person's mail; a false Soft costs one more attempt.
//!
//! Nothing here logs: these messages are full of email addresses.

use std::borrow::Cow;
use std::collections::HashSet;

use mail_parser::{
    Address, Header, HeaderName, HeaderValue, Message, MessageParser, MimeHeaders, PartType,
};

/// What came back, as far as it changes anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The address does not work and will not: stop sending to it.
    Hard,
    /// Not delivered this time (deferred, mailbox full, refused by policy): the address stands.
    Soft,
    /// The reader reported the email as unwanted (a feedback loop's report).
    Complaint,
    /// A notice that changes nothing: out of office, a successful delivery notice.
    AutoReply,
    /// Not recognised: kept for an operator.
    Unparsed,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Hard => "hard",
            Kind::Soft => "soft",
            Kind::Complaint => "complaint",
            Kind::AutoReply => "auto_reply",
            Kind::Unparsed => "unparsed",
        }
    }
}

/// One received message, interpreted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The whole message's verdict.
    pub kind: Kind,
    /// Per-recipient results (DSN blocks, or what a plain-text bounce names); may be empty.
    pub recipients: Vec<Recipient>,
    /// Addresses for which `is_return_path` said true, best first, deduplicated, lower-cased.
    pub return_paths: Vec<String>,
    /// The deciding enhanced status code, e.g. "5.1.1" (or "5.0.0" derived from a bare 550).
    pub status: Option<String>,
    /// The deciding diagnostic text, on one line, at most [`MAX_DIAGNOSTIC`] characters.
    pub diagnostic: Option<String>,
    /// A feedback report's `Feedback-Type`, lower-cased.
    pub feedback_type: Option<String>,
}

/// What a report says about one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// As the report wrote it (`Final-Recipient`, else `Original-Recipient`), without the
    /// address type and angle brackets.
    pub address: Option<String>,
    /// The DSN `Action`, lower-cased ("failed", "delayed", "delivered", ...).
    pub action: Option<String>,
    /// The enhanced status code, normalised ("5.1.1").
    pub status: Option<String>,
    /// The diagnostic text without its type ("smtp;"), on one line, at most
    /// [`MAX_DIAGNOSTIC`] characters.
    pub diagnostic: Option<String>,
    pub kind: Kind,
}

/// The longest diagnostic kept, in characters: enough for any SMTP reply that says something.
pub const MAX_DIAGNOSTIC: usize = 500;

/// At most this many distinct candidate addresses are offered to `is_return_path` (which checks
/// a signature): the best-placed ones come first, so a message stuffed with addresses costs a
/// bounded number of checks and loses only the worst-placed candidates.
const MAX_CANDIDATES: usize = 1000;

/// Reads one received message and says what it is. Never panics, on any bytes; work is linear
/// in the input's size.
///
/// `is_return_path` recognises the caller's own VERP addresses; it is offered lower-cased
/// candidates, best-placed first: the envelope headers a receiving MTA adds (`Delivered-To`,
/// `X-Original-To`, `Envelope-To`, `X-Envelope-To`), then `To` and `Cc`; then the returned
/// original message's `Return-Path` (and a DSN's `X-Postfix-Sender`, a feedback report's
/// `Original-Mail-From`), then its `From` and `Sender`; last, any address-shaped token anywhere
/// in the text.
pub fn interpret(raw: &[u8], is_return_path: &dyn Fn(&str) -> bool) -> Report {
    let parsed = parse(raw);
    let view = match &parsed {
        Some(message) => View::of(message),
        // No headers at all: only the raw scan for addresses remains.
        None => View::default(),
    };
    let mut report = classify(&view);
    report.return_paths = return_paths(&view, raw, is_return_path);
    if let Some(message) = parsed {
        drop_flat(message);
    }
    report
}

/// The message's MIME structure, decoded where that is safe, or at least its headers.
///
/// Two defects of `mail-parser` 0.11 are kept out here:
///
/// - It parses an attached message that has a transfer encoding (base64, quoted-printable:
///   RFC 2046 forbids both, some MTAs do it) by decoding it and recursing, then copies the
///   result with a recursive `into_owned`; what the decoded bytes nest inside is not limited, so
///   a small crafted message overflows the stack (an abort, not a panic). So the structure is
///   read first with transfer encodings ignored (no decoding, no recursion), and only when no
///   attached message is encoded is the message parsed again normally. Otherwise the undecoded
///   reading is used: status and feedback parts are 7-bit in practice, and the top-level
///   headers are all there.
/// - Some malformed nestings reach its `debug_assert!`s (and an integer underflow), which panic
///   in debug builds only. Those are caught, and then only the headers are read, with the rest
///   as one plain text (which still holds the status fields and the quoted replies).
fn parse(raw: &[u8]) -> Option<Message<'_>> {
    let structured = std::panic::catch_unwind(|| {
        let undecoded = MessageParser::new()
            .with_mime_headers()
            .with_address_headers()
            .with_message_ids()
            .header_text(HeaderName::Subject)
            .ignore_header(HeaderName::ContentTransferEncoding)
            .parse(raw)?;
        if has_encoded_message(&undecoded) {
            return Some(undecoded);
        }
        drop_flat(undecoded);
        MessageParser::default().parse(raw)
    });
    match structured {
        Ok(message) => message,
        Err(_) => std::panic::catch_unwind(|| {
            let mut message = MessageParser::default().parse_headers(raw)?;
            let root = message.parts.first_mut()?;
            // The body starts after the last header (parse_headers does not say where).
            let end = root.headers.iter().map(|h| h.offset_end).max().unwrap_or(0);
            let body = raw.get(end as usize..).unwrap_or_default();
            root.body = PartType::Text(String::from_utf8_lossy(body));
            // The body is read as one text, whatever the message said it was.
            root.headers.retain(|h| {
                h.name != HeaderName::ContentType && h.name != HeaderName::ContentTransferEncoding
            });
            Some(message)
        })
        .ok()
        .flatten(),
    }
}

/// Whether any part that `mail-parser` would parse as a message (message/rfc822, message/global,
/// a part without a type in a multipart/digest), at any depth, has a transfer encoding other
/// than 7bit, 8bit or binary.
fn has_encoded_message(message: &Message<'_>) -> bool {
    let mut stack = vec![message];
    while let Some(message) = stack.pop() {
        let mut digest_children: HashSet<u32> = HashSet::new();
        for part in &message.parts {
            if part.content_type().is_some_and(|ct| {
                ct.ctype().eq_ignore_ascii_case("multipart")
                    && ct
                        .subtype()
                        .is_some_and(|s| s.eq_ignore_ascii_case("digest"))
            }) {
                digest_children.extend(part.sub_parts().unwrap_or_default());
            }
        }
        for (index, part) in message.parts.iter().enumerate() {
            if let PartType::Message(inner) = &part.body {
                stack.push(inner);
            }
            let is_message = match part.content_type() {
                Some(ct) => {
                    ct.ctype().eq_ignore_ascii_case("message")
                        && ct.subtype().is_some_and(|s| {
                            s.eq_ignore_ascii_case("rfc822") || s.eq_ignore_ascii_case("global")
                        })
                }
                None => u32::try_from(index).is_ok_and(|i| digest_children.contains(&i)),
            };
            let encoded = part.headers.iter().any(|h| {
                h.name == HeaderName::ContentTransferEncoding
                    && message
                        .raw_message
                        .get(h.offset_start as usize..h.offset_end as usize)
                        .is_some_and(|v| {
                            let v = String::from_utf8_lossy(v);
                            let v = v.trim();
                            !(v.eq_ignore_ascii_case("7bit")
                                || v.eq_ignore_ascii_case("8bit")
                                || v.eq_ignore_ascii_case("binary")
                                || v.is_empty())
                        })
            });
            if is_message && encoded {
                return true;
            }
        }
    }
    false
}

/// Drops a parsed message without recursing: each nested `message/rfc822` is a level of
/// `Message` inside a part, and `mail-parser` nests them as deep as the input does, so the
/// derived recursive drop of a message nested tens of thousands deep would overflow the stack.
fn drop_flat(message: Message<'_>) {
    let mut stack = vec![message];
    while let Some(mut message) = stack.pop() {
        for part in &mut message.parts {
            if let PartType::Message(inner) = std::mem::take(&mut part.body) {
                stack.push(inner);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What the message holds, gathered once.

/// One header field: its name lower-cased, its value on one line, and the addresses
/// `mail-parser` found in it (for address fields).
#[derive(Debug, Default)]
struct Field {
    name: String,
    value: String,
    addresses: Vec<String>,
}

/// The parts of the message this module reads.
#[derive(Debug, Default)]
struct View {
    /// The top-level header fields.
    top: Vec<Field>,
    /// The top-level `multipart/report`'s `report-type`, lower-cased.
    report_type: Option<String>,
    /// Bodies of delivery status parts (and text parts of a report that may be one).
    status_parts: Vec<String>,
    /// Bodies of `message/feedback-report` parts.
    feedback_parts: Vec<String>,
    /// The header fields of each returned original message (attached message, attached
    /// headers).
    originals: Vec<Vec<Field>>,
    /// The human-readable text parts (HTML turned into text), in order.
    human: Vec<String>,
    /// Every other decoded text, for the last-resort address scan.
    other_text: Vec<String>,
}

impl View {
    fn of(message: &Message<'_>) -> View {
        let mut view = View {
            top: message_fields(message),
            ..View::default()
        };
        // Children of a multipart/report after the first (the human-readable part): a status
        // part may arrive there as text/plain.
        let mut report_children: HashSet<u32> = HashSet::new();
        for (index, part) in message.parts.iter().enumerate() {
            let (ctype, subtype) = match part.content_type() {
                Some(ct) => (
                    ct.ctype().to_ascii_lowercase(),
                    ct.subtype().unwrap_or("").to_ascii_lowercase(),
                ),
                None => (String::new(), String::new()),
            };
            if ctype == "multipart" && subtype == "report" {
                if let Some(ct) = part.content_type() {
                    if view.report_type.is_none() {
                        view.report_type = ct.attribute("report-type").map(|t| t.to_lowercase());
                    }
                }
                if let Some(children) = part.sub_parts() {
                    report_children.extend(children.iter().skip(1));
                }
                continue;
            }
            let in_report = u32::try_from(index).is_ok_and(|i| report_children.contains(&i));
            match (ctype.as_str(), subtype.as_str(), &part.body) {
                (_, _, PartType::Multipart(_)) => {}
                ("message", "delivery-status" | "global-delivery-status", body) => {
                    view.status_parts.push(body_text(body).into_owned());
                }
                ("message", "feedback-report", body) => {
                    view.feedback_parts.push(body_text(body).into_owned());
                }
                (_, _, PartType::Message(inner)) => {
                    view.originals.push(message_fields(inner));
                    for inner_part in &inner.parts {
                        if let PartType::Text(t) | PartType::Html(t) = &inner_part.body {
                            view.other_text.push(t.to_string());
                        }
                    }
                }
                ("message", "rfc822" | "global", body)
                | ("text" | "message", "rfc822-headers" | "global-headers", body) => {
                    // An attached message mail-parser could not parse, or attached headers.
                    let text = body_text(body);
                    view.originals.push(header_block(&text));
                    view.other_text.push(text.into_owned());
                }
                ("text" | "", "plain" | "", PartType::Text(text)) if in_report => {
                    // Perhaps a status part sent as text/plain; if it holds no recipient block
                    // it is read as human text too.
                    view.status_parts.push(text.to_string());
                    view.human.push(text.to_string());
                }
                (_, _, PartType::Text(text)) => view.human.push(text.to_string()),
                (_, _, PartType::Html(html)) => {
                    view.human
                        .push(mail_parser::decoders::html::html_to_text(html));
                }
                (_, _, PartType::Binary(bytes) | PartType::InlineBinary(bytes)) => {
                    if ctype == "text" || ctype == "message" {
                        view.other_text
                            .push(String::from_utf8_lossy(bytes).into_owned());
                    }
                }
            }
        }
        view
    }

    fn top_values<'v>(&'v self, name: &'static str) -> impl Iterator<Item = &'v Field> + 'v {
        self.top.iter().filter(move |f| f.name == name)
    }

    fn top_value(&self, name: &'static str) -> Option<&str> {
        self.top_values(name).next().map(|f| f.value.as_str())
    }
}

fn body_text<'b>(body: &'b PartType<'_>) -> Cow<'b, str> {
    match body {
        PartType::Text(t) | PartType::Html(t) => Cow::Borrowed(t.as_ref()),
        PartType::Binary(b) | PartType::InlineBinary(b) => String::from_utf8_lossy(b),
        PartType::Message(m) => String::from_utf8_lossy(m.raw_message.as_ref()),
        PartType::Multipart(_) => Cow::Borrowed(""),
    }
}

/// The header fields of a parsed message's root part.
fn message_fields(message: &Message<'_>) -> Vec<Field> {
    let Some(root) = message.parts.first() else {
        return Vec::new();
    };
    root.headers
        .iter()
        .map(|h| field(h, message.raw_message.as_ref()))
        .collect()
}

fn field(header: &Header<'_>, raw: &[u8]) -> Field {
    let raw_value = || {
        raw.get(header.offset_start as usize..header.offset_end as usize)
            .map(|b| one_line(&String::from_utf8_lossy(b)))
            .unwrap_or_default()
    };
    let mut addresses = Vec::new();
    let value = match &header.value {
        HeaderValue::Text(t) => one_line(t),
        HeaderValue::TextList(list) => one_line(&list.join(" ")),
        HeaderValue::Address(address) => {
            let mut push = |a: &mail_parser::Addr<'_>| {
                if let Some(a) = &a.address {
                    addresses.push(a.to_string());
                }
            };
            match address {
                Address::List(list) => list.iter().for_each(&mut push),
                Address::Group(groups) => groups
                    .iter()
                    .flat_map(|g| g.addresses.iter())
                    .for_each(&mut push),
            }
            raw_value()
        }
        _ => raw_value(),
    };
    Field {
        name: header.name.as_str().to_ascii_lowercase(),
        value,
        addresses,
    }
}

/// Header-style fields of a text, up to its first blank line (attached headers, a quoted header
/// block).
fn header_block(text: &str) -> Vec<Field> {
    blocks(text).into_iter().next().unwrap_or_default()
}

/// Header-style fields in blank-line separated blocks (a DSN's per-message and per-recipient
/// blocks): names lower-cased, folded continuation lines joined with a space. Lines that are
/// not fields are skipped.
fn blocks(text: &str) -> Vec<Vec<Field>> {
    let mut out = Vec::new();
    let mut block: Vec<Field> = Vec::new();
    for line in lines(text) {
        if line.trim().is_empty() {
            if !block.is_empty() {
                out.push(std::mem::take(&mut block));
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(last) = block.last_mut() {
                if !last.value.is_empty() {
                    last.value.push(' ');
                }
                last.value.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim_end();
            if !name.is_empty()
                && name.len() <= 100
                && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
            {
                block.push(Field {
                    name: name.to_ascii_lowercase(),
                    value: value.trim().to_owned(),
                    addresses: Vec::new(),
                });
            }
        }
    }
    if !block.is_empty() {
        out.push(block);
    }
    out
}

fn block_value<'b>(block: &'b [Field], name: &str) -> Option<&'b str> {
    block
        .iter()
        .find(|f| f.name == name)
        .map(|f| f.value.as_str())
}

/// Lines without their line ending, CRLF or LF.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l))
}

/// Whitespace runs (folding, tabs, CR/LF) as one space, control characters dropped, trimmed.
fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(4096));
    let mut space = false;
    for c in text.chars() {
        if c.is_whitespace() {
            space = !out.is_empty();
        } else if !c.is_control() {
            if space {
                out.push(' ');
                space = false;
            }
            out.push(c);
        }
    }
    out
}

/// [`one_line`], cut to [`MAX_DIAGNOSTIC`] characters.
fn diagnostic_text(text: &str) -> Option<String> {
    let line = one_line(text);
    let cut: String = line.chars().take(MAX_DIAGNOSTIC).collect();
    let cut = cut.trim_end().to_owned();
    (!cut.is_empty()).then_some(cut)
}

// ---------------------------------------------------------------------------------------------
// Status codes.

/// An enhanced status code (RFC 3463), normalised: "5.01.001" is 5.1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Enhanced {
    class: u8,
    subject: u16,
    detail: u16,
}

impl Enhanced {
    fn text(self) -> String {
        format!("{}.{}.{}", self.class, self.subject, self.detail)
    }

    fn parse(text: &str) -> Option<Enhanced> {
        let bytes = text.as_bytes();
        (0..bytes.len()).find_map(|i| enhanced_at(bytes, i).map(|(code, _)| code))
    }
}

/// The enhanced code starting exactly at `i` (not inside a longer number), and where it ends.
fn enhanced_at(bytes: &[u8], i: usize) -> Option<(Enhanced, usize)> {
    let class = *bytes.get(i)?;
    if !matches!(class, b'2' | b'4' | b'5') {
        return None;
    }
    if i > 0 && (bytes[i - 1].is_ascii_digit() || bytes[i - 1] == b'.') {
        return None;
    }
    let number = |start: usize| -> Option<(u16, usize)> {
        let digits = bytes
            .get(start..)?
            .iter()
            .take(4)
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits == 0 || digits > 3 {
            return None;
        }
        let value = bytes[start..start + digits]
            .iter()
            .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
        Some((value, start + digits))
    };
    if bytes.get(i + 1) != Some(&b'.') {
        return None;
    }
    let (subject, end) = number(i + 2)?;
    if bytes.get(end) != Some(&b'.') {
        return None;
    }
    let (detail, end) = number(end + 1)?;
    if bytes.get(end).is_some_and(|b| {
        b.is_ascii_digit() || *b == b'.' && bytes.get(end + 1).is_some_and(u8::is_ascii_digit)
    }) {
        return None;
    }
    Some((
        Enhanced {
            class: class - b'0',
            subject,
            detail,
        },
        end,
    ))
}

/// What a failure with this status means for the address.
fn failure_kind(status: Enhanced, basic: Option<u16>) -> Kind {
    match status.class {
        5 => {
            let policy = status.subject == 7;
            let not_the_address = matches!((status.subject, status.detail), (2, 2) | (3, 4));
            // A bare 552 is "exceeded storage allocation" (RFC 5321), whatever the server meant
            // by it, a full mailbox or a message too big: neither is the address's fault.
            let bare_552 = status.subject == 0 && status.detail == 0 && basic == Some(552);
            if policy || not_the_address || bare_552 {
                Kind::Soft
            } else {
                Kind::Hard
            }
        }
        _ => Kind::Soft,
    }
}

/// An SMTP reply quoted in a text: its basic code and, when one follows it, its enhanced code.
#[derive(Debug, Clone, Copy)]
struct Reply {
    basic: u16,
    enhanced: Option<Enhanced>,
    /// Byte offset of the basic code in its line.
    at: usize,
}

impl Reply {
    /// The enhanced code, or the class's x.0.0 when the reply has only a basic code.
    fn status(self) -> Enhanced {
        self.enhanced.unwrap_or(Enhanced {
            class: (self.basic / 100) as u8,
            subject: 0,
            detail: 0,
        })
    }

    fn kind(self) -> Kind {
        failure_kind(self.status(), Some(self.basic))
    }
}

/// The SMTP failure replies (4yz, 5yz, y in 0..=5) quoted in one line. A reply followed by an
/// enhanced code of its class counts wherever it stands; a bare one only at the start of the
/// line or after `:`, `;`, `#`, `<<<` or "said", so that a phone number or a size in the text
/// ("0800 550 1234") is not taken for a reply.
fn replies_in(line: &str) -> Vec<Reply> {
    let bytes = line.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i + 3 <= bytes.len() {
        let (a, b, c) = (bytes[i], bytes[i + 1], bytes[i + 2]);
        let before_ok = i == 0 || {
            let p = bytes[i - 1];
            p.is_ascii_whitespace() || matches!(p, b':' | b';' | b'(' | b'"' | b'#' | b'=' | b'<')
        };
        let shape = matches!(a, b'4' | b'5') && (b'0'..=b'5').contains(&b) && c.is_ascii_digit();
        let after = bytes.get(i + 3).copied();
        let after_ok = matches!(after, None | Some(b' ' | b'-' | b'\t'));
        if !(before_ok && shape && after_ok) {
            i += 1;
            continue;
        }
        let basic = u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0');
        let mut j = i + 4;
        while bytes.get(j).is_some_and(|b| *b == b' ' || *b == b'\t') {
            j += 1;
        }
        let enhanced = if after.is_some() {
            enhanced_at(bytes, j)
                .filter(|(e, _)| e.class == a - b'0')
                .map(|(e, _)| e)
        } else {
            None
        };
        let accept = enhanced.is_some() || {
            // Only the last few bytes before the code are looked at, so that a long line of
            // numbers stays linear.
            let before = line[..i].trim_end().as_bytes();
            let tail = &before[before.len().saturating_sub(4)..];
            before.is_empty()
                || before.ends_with(b":")
                || before.ends_with(b";")
                || before.ends_with(b"#")
                || before.ends_with(b"<<<")
                || tail.eq_ignore_ascii_case(b"said")
        };
        if accept {
            out.push(Reply {
                basic,
                enhanced,
                at: i,
            });
        }
        i += 3;
    }
    out
}

/// The deciding reply among several: the first permanent one that has an enhanced code, else
/// the first permanent one, else the same among the temporary ones.
fn deciding<T: Copy>(replies: &[(Reply, T)]) -> Option<(Reply, T)> {
    for class in [5, 4] {
        let of_class = || replies.iter().filter(move |(r, _)| r.basic / 100 == class);
        if let Some(found) = of_class()
            .find(|(r, _)| r.enhanced.is_some())
            .or_else(|| of_class().next())
        {
            return Some(*found);
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// The verdict.

fn classify(view: &View) -> Report {
    if let Some(report) = delivery_status(view) {
        return report;
    }
    if let Some(report) = feedback_report(view) {
        return report;
    }
    if looks_like_bounce(view) {
        return plain_bounce(view);
    }
    if is_auto_reply(view) {
        return verdict(Kind::AutoReply);
    }
    verdict(Kind::Unparsed)
}

fn verdict(kind: Kind) -> Report {
    Report {
        kind,
        recipients: Vec::new(),
        return_paths: Vec::new(),
        status: None,
        diagnostic: None,
        feedback_type: None,
    }
}

/// Rule 1: the recipient blocks of a delivery status notice. `None` when no block says
/// anything usable (no action, no status), so that the message is read as a plain bounce.
fn delivery_status(view: &View) -> Option<Report> {
    let mut recipients = Vec::new();
    for part in &view.status_parts {
        for block in blocks(part) {
            if let Some(recipient) = recipient_block(&block) {
                recipients.push(recipient);
            }
        }
    }
    let kind = [Kind::Hard, Kind::Soft, Kind::AutoReply]
        .into_iter()
        .find(|k| recipients.iter().any(|r| r.kind == *k))?;
    let deciding = recipients.iter().find(|r| r.kind == kind)?;
    Some(Report {
        kind,
        status: deciding.status.clone(),
        diagnostic: deciding.diagnostic.clone(),
        recipients,
        return_paths: Vec::new(),
        feedback_type: None,
    })
}

fn recipient_block(block: &[Field]) -> Option<Recipient> {
    let address = block_value(block, "final-recipient")
        .or_else(|| block_value(block, "original-recipient"))
        .and_then(typed_address);
    let action = block_value(block, "action")
        .and_then(|a| a.split_whitespace().next())
        .map(|a| a.to_ascii_lowercase());
    let diagnostic_code = block_value(block, "diagnostic-code").unwrap_or("");
    let diagnostic = diagnostic_text(strip_type(diagnostic_code));
    let reply = lines(diagnostic_code)
        .flat_map(|l| replies_in(strip_type(l)))
        .next();
    let from_diagnostic = reply.and_then(|r| r.enhanced);
    let status = match block_value(block, "status").and_then(Enhanced::parse) {
        // "5.0.0" says only "failed"; the diagnostic's own code of the same class says why
        // (Postfix writes 5.0.0 for a remote "550 5.7.1 ... spam").
        Some(s) if s.subject == 0 && s.detail == 0 => {
            Some(from_diagnostic.filter(|d| d.class == s.class).unwrap_or(s))
        }
        Some(s) => Some(s),
        None => from_diagnostic.or_else(|| reply.map(Reply::status)),
    };
    let basic = reply.map(|r| r.basic);
    let kind = match (action.as_deref(), status) {
        (Some("failed"), Some(s)) if s.class == 5 => failure_kind(s, basic),
        // Failed without a permanent status is not evidence enough against the address.
        (Some("failed"), _) => Kind::Soft,
        (Some("delayed"), _) => Kind::Soft,
        (Some("delivered" | "relayed" | "expanded"), _) => Kind::AutoReply,
        (_, Some(s)) => match s.class {
            5 => failure_kind(s, basic),
            4 => Kind::Soft,
            _ => Kind::AutoReply,
        },
        (_, None) => return None,
    };
    Some(Recipient {
        address,
        action,
        status: status.map(Enhanced::text),
        diagnostic,
        kind,
    })
}

/// `rfc822; user@example.com` → `user@example.com` (angle brackets and spaces trimmed).
fn typed_address(value: &str) -> Option<String> {
    let address = strip_type(value)
        .trim()
        .trim_matches(|c| c == '<' || c == '>')
        .trim();
    (!address.is_empty()).then(|| address.to_owned())
}

/// A DSN value without its type: `smtp; 550 ...` → `550 ...`. Only a leading token of letters,
/// digits and `-` counts as a type, so a `;` later in the text stays.
fn strip_type(value: &str) -> &str {
    match value.split_once(';') {
        Some((kind, rest))
            if !kind.trim().is_empty()
                && kind
                    .trim()
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
        {
            rest.trim_start()
        }
        _ => value,
    }
}

/// Rule 2: a feedback report. `None` without a `Feedback-Type`.
fn feedback_report(view: &View) -> Option<Report> {
    let fields: Vec<Field> = view
        .feedback_parts
        .iter()
        .flat_map(|p| blocks(p))
        .flatten()
        .collect();
    let feedback_type = block_value(&fields, "feedback-type")?
        .split_whitespace()
        .next()?
        .to_ascii_lowercase();
    let kind = match feedback_type.as_str() {
        // A reader saying "this is not spam" and an authentication failure report (RFC 6591,
        // about the sending domain, not the reader) change nothing for the address.
        "not-spam" | "auth-failure" => Kind::AutoReply,
        // abuse, fraud, virus, other; and a type this module does not know is read as "other":
        // the report still says a reader objected.
        _ => Kind::Complaint,
    };
    let recipients = fields
        .iter()
        .filter(|f| f.name == "original-rcpt-to")
        .filter_map(|f| typed_address(&f.value))
        .map(|address| Recipient {
            address: Some(address),
            action: None,
            status: None,
            diagnostic: None,
            kind,
        })
        .collect();
    Some(Report {
        kind,
        recipients,
        return_paths: Vec::new(),
        status: None,
        diagnostic: None,
        feedback_type: Some(feedback_type),
    })
}

/// Subjects that bounces without a report structure carry (lower-case, anywhere in the subject).
const BOUNCE_SUBJECTS: &[&str] = &[
    "undelivered mail returned to sender",
    "undeliverable:",
    "undeliverable mail",
    "delivery status notification",
    "mail delivery failed",
    "delivery failure",
    "failure notice",
    "returned mail",
    "non-delivery",
    "undelivered mail",
];

fn looks_like_bounce(view: &View) -> bool {
    let from_daemon = ["from", "sender"].iter().any(|name| {
        view.top_values(name)
            .flat_map(field_addresses)
            .chain(view.top_values(name).map(|f| f.value.clone()))
            .any(|address| {
                let local = address
                    .split('@')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                local == "mailer-daemon" || local == "postmaster"
            })
    });
    let subject = view.top_value("subject").unwrap_or("").to_lowercase();
    from_daemon
        || BOUNCE_SUBJECTS.iter().any(|s| subject.contains(s))
        || view.top_value("x-failed-recipients").is_some()
        || view.report_type.as_deref() == Some("delivery-status")
        || !view.status_parts.is_empty() && view.report_type.is_none()
}

/// The human-readable text of a bounce, up to the returned original (whose own text, phone
/// numbers and all, is not the bounce's).
fn bounce_lines(view: &View) -> Vec<&str> {
    let mut out = Vec::new();
    for text in &view.human {
        for line in lines(text) {
            if is_original_marker(line) {
                break;
            }
            out.push(line);
        }
    }
    out
}

/// A separator line that introduces the returned original in a plain-text bounce: Exim's
/// "------ This is a copy of the message, including all the headers. ------", qmail's "--- Below
/// this line is a copy of the message.", sendmail's "----- Original message follows -----".
fn is_original_marker(line: &str) -> bool {
    let lower = line.trim().to_ascii_lowercase();
    lower.contains("copy of the message")
        || lower.contains("original message follows")
        || lower.starts_with(['-', '=', '_', '*'])
            && (lower.contains("original message") || lower.contains("message header"))
}

/// Rule 4: a bounce without a report: the quoted SMTP reply decides.
fn plain_bounce(view: &View) -> Report {
    let lines = bounce_lines(view);
    let found: Vec<(Reply, usize)> = lines
        .iter()
        .enumerate()
        .flat_map(|(n, line)| replies_in(line).into_iter().map(move |r| (r, n)))
        .collect();
    let failed: Vec<String> = view
        .top_values("x-failed-recipients")
        .flat_map(|f| {
            f.value
                .split(',')
                .map(str::trim)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter_map(|a| typed_address(&a))
        .collect();
    let (kind, status, diagnostic, near) = match deciding(&found) {
        Some((reply, n)) => {
            let line = lines[n];
            let diagnostic = diagnostic_text(line.get(reply.at..).unwrap_or(line));
            // The addresses in the reply's paragraph (Exim names the recipient on the line
            // before "SMTP error from remote mail server").
            let start = lines[..n]
                .iter()
                .rposition(|l| l.trim().is_empty())
                .map_or(0, |p| p + 1);
            let end = lines[n..]
                .iter()
                .position(|l| l.trim().is_empty())
                .map_or(lines.len(), |p| n + p);
            let mut near = Vec::new();
            for l in &lines[start..end] {
                for a in address_tokens(l) {
                    if !near.contains(&a) && near.len() < 20 {
                        near.push(a);
                    }
                }
            }
            (reply.kind(), Some(reply.status().text()), diagnostic, near)
        }
        None => {
            const PERMANENT: &[&str] = &[
                "permanent error",
                "does not exist",
                "user unknown",
                "no such user",
            ];
            let hit = lines.iter().find(|l| {
                let lower = l.to_lowercase();
                PERMANENT.iter().any(|p| lower.contains(p))
            });
            match hit {
                Some(line) => (Kind::Hard, None, diagnostic_text(line), Vec::new()),
                None => (Kind::Unparsed, None, None, Vec::new()),
            }
        }
    };
    let addresses = if failed.is_empty() { near } else { failed };
    let recipients = if kind == Kind::Unparsed {
        Vec::new()
    } else {
        addresses
            .into_iter()
            .map(|address| Recipient {
                address: Some(address),
                action: None,
                status: status.clone(),
                diagnostic: diagnostic.clone(),
                kind,
            })
            .collect()
    };
    Report {
        kind,
        recipients,
        return_paths: Vec::new(),
        status,
        diagnostic,
        feedback_type: None,
    }
}

/// Out-of-office subjects, at the start of the subject (lower-case).
const AUTO_REPLY_SUBJECTS: &[&str] = &[
    "out of office",
    "automatic reply",
    "auto:",
    "autoreply",
    "auto-reply",
    "abwesenheitsnotiz",
];

/// Looser out-of-office phrases (anywhere in the subject), trusted only together with
/// `X-Auto-Response-Suppress`, which Exchange sets on its automatic replies.
const AUTO_REPLY_PHRASES: &[&str] = &[
    "out of office",
    "out of the office",
    "automatic reply",
    "auto reply",
    "autoreply",
    "auto-reply",
    "away from",
    "on leave",
    "vacation",
    "abwesen",
    "automatische antwort",
    "réponse automatique",
    "respuesta automática",
    "risposta automatica",
    "automatisch antwoord",
];

/// Rule 5: an automatic reply.
fn is_auto_reply(view: &View) -> bool {
    let auto_submitted = view.top_values("auto-submitted").any(|f| {
        let value = f.value.split(';').next().unwrap_or("").trim();
        !value.is_empty() && !value.eq_ignore_ascii_case("no")
    });
    let flagged =
        view.top_value("x-autoreply").is_some() || view.top_value("x-autorespond").is_some();
    let precedence = view
        .top_values("precedence")
        .any(|f| f.value.trim().eq_ignore_ascii_case("auto_reply"));
    let subject = view
        .top_value("subject")
        .unwrap_or("")
        .trim()
        .to_lowercase();
    let ooo_subject = AUTO_REPLY_SUBJECTS.iter().any(|s| subject.starts_with(s));
    let suppressed = view.top_value("x-auto-response-suppress").is_some()
        && AUTO_REPLY_PHRASES.iter().any(|p| subject.contains(p));
    auto_submitted || flagged || precedence || ooo_subject || suppressed
}

// ---------------------------------------------------------------------------------------------
// Return paths.

/// Offers candidates to `is_return_path`, each distinct lower-cased address once, and keeps
/// those it accepts in the order offered.
struct Candidates<'f> {
    is_return_path: &'f dyn Fn(&str) -> bool,
    seen: HashSet<String>,
    found: Vec<String>,
}

impl Candidates<'_> {
    fn offer(&mut self, address: &str) {
        if self.seen.len() >= MAX_CANDIDATES {
            return;
        }
        let Some(address) = clean_address(address) else {
            return;
        };
        let address = address.to_lowercase();
        if self.seen.contains(&address) {
            return;
        }
        if (self.is_return_path)(&address) {
            self.found.push(address.clone());
        }
        self.seen.insert(address);
    }

    fn offer_field(&mut self, field: &Field) {
        for address in field_addresses(field) {
            self.offer(&address);
        }
    }
}

/// The addresses in a header field: `mail-parser`'s for address fields, else the
/// address-shaped tokens of its value.
fn field_addresses(field: &Field) -> Vec<String> {
    if field.addresses.is_empty() {
        address_tokens(&field.value)
    } else {
        field.addresses.clone()
    }
}

fn return_paths(view: &View, raw: &[u8], is_return_path: &dyn Fn(&str) -> bool) -> Vec<String> {
    let mut candidates = Candidates {
        is_return_path,
        seen: HashSet::new(),
        found: Vec::new(),
    };
    for name in [
        "delivered-to",
        "x-original-to",
        "envelope-to",
        "x-envelope-to",
        "to",
        "cc",
    ] {
        for field in view.top_values(name) {
            candidates.offer_field(field);
        }
    }
    // The returned original's envelope sender: its Return-Path, Postfix's X-Postfix-Sender in
    // a DSN, a feedback report's Original-Mail-From, a quoted Return-Path line.
    for original in &view.originals {
        for field in original.iter().filter(|f| f.name == "return-path") {
            candidates.offer_field(field);
        }
    }
    let report_fields: Vec<Field> = view
        .status_parts
        .iter()
        .chain(&view.feedback_parts)
        .flat_map(|p| blocks(p))
        .flatten()
        .collect();
    for field in &report_fields {
        if field.name == "x-postfix-sender" || field.name == "original-mail-from" {
            candidates.offer_field(field);
        }
    }
    let quoted = |prefix: &'static str| {
        view.human
            .iter()
            .flat_map(|t| lines(t))
            .filter_map(move |line| {
                let line = line.trim_start_matches(|c: char| c.is_whitespace() || c == '>');
                line.get(..prefix.len())
                    .filter(|p| p.eq_ignore_ascii_case(prefix))
                    .map(|_| &line[prefix.len()..])
            })
    };
    for value in quoted("return-path:") {
        for address in address_tokens(value) {
            candidates.offer(&address);
        }
    }
    for original in &view.originals {
        for field in original
            .iter()
            .filter(|f| f.name == "from" || f.name == "sender")
        {
            candidates.offer_field(field);
        }
    }
    for value in quoted("from:").chain(quoted("sender:")) {
        for address in address_tokens(value) {
            candidates.offer(&address);
        }
    }
    // Last resort: any address-shaped token anywhere.
    let texts = view
        .human
        .iter()
        .chain(&view.status_parts)
        .chain(&view.feedback_parts)
        .chain(&view.other_text);
    for text in texts {
        for address in address_tokens(text) {
            candidates.offer(&address);
        }
    }
    for address in address_tokens(&String::from_utf8_lossy(raw)) {
        candidates.offer(&address);
    }
    candidates.found
}

/// Address-shaped tokens of a text: split on whitespace and `<>"'();,[]`, trimmed, and kept
/// when [`clean_address`] accepts them.
fn address_tokens(text: &str) -> Vec<String> {
    text.split(|c: char| c.is_whitespace() || "<>\"'();,[]".contains(c))
        .filter(|t| t.contains('@'))
        .filter_map(clean_address)
        .map(str::to_owned)
        .collect()
}

/// `token` as an address, if it has the shape of one: one `@`, a local part, a dotted domain
/// of letters, digits and `-`. Surrounding punctuation and a `mailto:` are removed.
fn clean_address(token: &str) -> Option<&str> {
    let token = token.trim_matches(|c: char| c.is_whitespace() || "<>\"'();,[].:".contains(c));
    let token = match token.get(..7) {
        Some(p) if p.eq_ignore_ascii_case("mailto:") => &token[7..],
        _ => token,
    };
    if token.len() > 254 {
        return None;
    }
    let (local, domain) = token.split_once('@')?;
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && local
            .chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && !"@<>()[],;:\\\"".contains(c));
    let domain_ok = domain.contains('.')
        && !domain.starts_with(['.', '-'])
        && !domain.ends_with(['.', '-'])
        && !domain.contains("..")
        && domain
            .chars()
            .all(|c| c.is_alphanumeric() || c == '-' || c == '.');
    (local_ok && domain_ok).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const VERP: &str = "bounces+abc123@bounce.example.org";

    fn ours(address: &str) -> bool {
        address.starts_with("bounces+") && address.ends_with("@bounce.example.org")
    }

    fn read(raw: &[u8]) -> Report {
        interpret(raw, &ours)
    }

    macro_rules! fixture {
        ($name:literal) => {
            include_bytes!(concat!("../../tests/fixtures/bounces/", $name, ".eml")).as_slice()
        };
    }

    const FIXTURES: &[&[u8]] = &[
        fixture!("postfix-user-unknown"),
        fixture!("gmail-does-not-exist"),
        fixture!("exchange-recipient-not-found"),
        fixture!("exim-plain"),
        fixture!("postfix-delayed-mailbox-full"),
        fixture!("dmarc-rejected"),
        fixture!("delivered-notice"),
        fixture!("arf-abuse"),
        fixture!("out-of-office"),
        fixture!("person-reply"),
    ];

    fn addresses(report: &Report) -> Vec<&str> {
        report
            .recipients
            .iter()
            .filter_map(|r| r.address.as_deref())
            .collect()
    }

    fn crlf(raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(raw.len() + raw.len() / 20);
        for &b in raw {
            if b == b'\n' {
                out.push(b'\r');
            }
            out.push(b);
        }
        out
    }

    #[test]
    fn postfix_user_unknown_is_hard() {
        let r = read(fixture!("postfix-user-unknown"));
        assert_eq!(r.kind, Kind::Hard);
        assert_eq!(r.status.as_deref(), Some("5.1.1"));
        assert_eq!(addresses(&r), ["head.teacher@example.net"]);
        assert_eq!(r.recipients[0].action.as_deref(), Some("failed"));
        assert_eq!(r.return_paths, [VERP]);
        assert_eq!(
            r.diagnostic.as_deref(),
            Some(
                "550 5.1.1 <head.teacher@example.net>: Recipient address rejected: User unknown \
                 in virtual mailbox table"
            ),
            "folded Diagnostic-Code joined on one line, without its type"
        );
        assert_eq!(r.feedback_type, None);
    }

    #[test]
    fn gmail_does_not_exist_is_hard() {
        let r = read(fixture!("gmail-does-not-exist"));
        assert_eq!(r.kind, Kind::Hard);
        assert_eq!(r.status.as_deref(), Some("5.1.1"));
        assert_eq!(addresses(&r), ["no.such.person@example.com"]);
        assert_eq!(r.return_paths, [VERP]);
        let diagnostic = r.diagnostic.unwrap();
        assert!(
            diagnostic.starts_with(
                "550-5.1.1 The email account that you tried to reach does not exist. Please try \
                 550-5.1.1 double-checking"
            ),
            "{diagnostic}"
        );
    }

    #[test]
    fn exchange_recipient_not_found_is_hard() {
        let r = read(fixture!("exchange-recipient-not-found"));
        assert_eq!(r.kind, Kind::Hard);
        assert_eq!(r.status.as_deref(), Some("5.1.10"));
        assert_eq!(addresses(&r), ["j.smith@schools.example.com"]);
        assert_eq!(r.return_paths, [VERP]);
        assert_eq!(
            r.diagnostic.as_deref(),
            Some(
                "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address \
                 lookup"
            )
        );
    }

    #[test]
    fn exim_plain_bounce_is_hard_from_the_quoted_reply() {
        let r = read(fixture!("exim-plain"));
        assert_eq!(r.kind, Kind::Hard);
        assert_eq!(r.status.as_deref(), Some("5.1.1"));
        assert_eq!(addresses(&r), ["governor@example.net"]);
        assert_eq!(r.recipients[0].kind, Kind::Hard);
        assert_eq!(r.return_paths, [VERP]);
        assert_eq!(
            r.diagnostic.as_deref(),
            Some("550 5.1.1 <governor@example.net>... User unknown")
        );
    }

    #[test]
    fn a_delayed_notice_for_a_full_mailbox_is_soft() {
        let r = read(fixture!("postfix-delayed-mailbox-full"));
        assert_eq!(r.kind, Kind::Soft);
        assert_eq!(r.status.as_deref(), Some("4.2.2"));
        assert_eq!(addresses(&r), ["busy.office@example.net"]);
        assert_eq!(r.recipients[0].action.as_deref(), Some("delayed"));
        assert_eq!(r.return_paths, [VERP]);
    }

    #[test]
    fn a_dmarc_rejection_is_soft_not_hard() {
        let r = read(fixture!("dmarc-rejected"));
        assert_eq!(r.kind, Kind::Soft);
        assert_eq!(r.status.as_deref(), Some("5.7.26"));
        assert_eq!(addresses(&r), ["parent@example.com"]);
        assert_eq!(r.return_paths, [VERP]);
    }

    #[test]
    fn a_delivery_notice_changes_nothing() {
        let r = read(fixture!("delivered-notice"));
        assert_eq!(r.kind, Kind::AutoReply);
        assert_eq!(r.status.as_deref(), Some("2.0.0"));
        assert_eq!(addresses(&r), ["coordinator@example.net"]);
        assert_eq!(r.return_paths, [VERP]);
    }

    #[test]
    fn an_abuse_report_is_a_complaint_found_by_the_originals_return_path() {
        let r = read(fixture!("arf-abuse"));
        assert_eq!(r.kind, Kind::Complaint);
        assert_eq!(r.feedback_type.as_deref(), Some("abuse"));
        assert_eq!(r.status, None);
        assert_eq!(addresses(&r), ["reader@example.com"]);
        assert_eq!(r.recipients[0].kind, Kind::Complaint);
        assert_eq!(r.return_paths, [VERP]);
    }

    #[test]
    fn an_out_of_office_reply_is_an_auto_reply() {
        let r = read(fixture!("out-of-office"));
        assert_eq!(r.kind, Kind::AutoReply);
        assert_eq!(r.status, None);
        assert!(r.recipients.is_empty());
        assert_eq!(r.return_paths, [VERP]);
    }

    #[test]
    fn a_persons_reply_is_unparsed() {
        let r = read(fixture!("person-reply"));
        assert_eq!(r.kind, Kind::Unparsed);
        assert_eq!(r.status, None);
        assert!(r.recipients.is_empty());
        assert!(r.return_paths.is_empty());
    }

    #[test]
    fn without_a_recognised_return_path_the_verdicts_stand_and_return_paths_are_empty() {
        for raw in FIXTURES {
            let r = interpret(raw, &|_| false);
            assert!(r.return_paths.is_empty());
            assert_eq!(r.kind, read(raw).kind);
        }
    }

    #[test]
    fn return_paths_are_offered_lower_cased_best_first_and_once() {
        let raw = b"Delivered-To: Bounces+Second@Bounce.Example.org\n\
            To: bounces+first@bounce.example.org, BOUNCES+SECOND@bounce.example.org\n\
            Subject: hello\n\n\
            text bounces+third@bounce.example.org.\n";
        let offered = std::cell::RefCell::new(Vec::new());
        let r = interpret(raw, &|a| {
            offered.borrow_mut().push(a.to_owned());
            ours(a)
        });
        assert_eq!(
            r.return_paths,
            [
                "bounces+second@bounce.example.org",
                "bounces+first@bounce.example.org",
                "bounces+third@bounce.example.org"
            ]
        );
        let offered = offered.into_inner();
        assert!(offered.iter().all(|a| *a == a.to_lowercase()));
        let distinct: HashSet<_> = offered.iter().collect();
        assert_eq!(distinct.len(), offered.len(), "each candidate offered once");
    }

    #[test]
    fn crlf_and_lf_line_endings_read_the_same() {
        for raw in FIXTURES {
            assert_eq!(read(&crlf(raw)), read(raw));
        }
    }

    #[test]
    fn header_and_field_names_are_case_insensitive() {
        let raw = String::from_utf8(fixture!("postfix-user-unknown").to_vec())
            .unwrap()
            .replace("Final-Recipient:", "FINAL-recipient:")
            .replace("Action:", "action:")
            .replace("Status: 5.1.1", "STATUS: 5.1.1")
            .replace("Diagnostic-Code:", "diagnostic-CODE:")
            .replace("Content-Type:", "content-type:")
            .replace("Delivered-To:", "DELIVERED-TO:");
        let r = read(raw.as_bytes());
        assert_eq!(r.kind, Kind::Hard);
        assert_eq!(r.status.as_deref(), Some("5.1.1"));
        assert_eq!(addresses(&r), ["head.teacher@example.net"]);
        assert!(r.diagnostic.unwrap().ends_with("virtual mailbox table"));
        assert_eq!(r.return_paths, [VERP]);
    }

    #[test]
    fn a_status_part_sent_as_text_plain_inside_a_report_is_read() {
        let raw = String::from_utf8(fixture!("postfix-user-unknown").to_vec())
            .unwrap()
            .replace(
                "Content-Type: message/delivery-status",
                "Content-Type: text/plain",
            );
        let r = read(raw.as_bytes());
        assert_eq!(r.kind, Kind::Hard);
        assert_eq!(r.status.as_deref(), Some("5.1.1"));
        assert_eq!(addresses(&r), ["head.teacher@example.net"]);
    }

    #[test]
    fn a_global_delivery_status_part_is_read() {
        let raw = String::from_utf8(fixture!("postfix-user-unknown").to_vec())
            .unwrap()
            .replace(
                "Content-Type: message/delivery-status",
                "Content-Type: message/global-delivery-status",
            )
            .replace(
                "rfc822; head.teacher@example.net",
                "utf-8; pupil.ünï@example.net",
            );
        let r = read(raw.as_bytes());
        assert_eq!(r.kind, Kind::Hard);
        assert_eq!(addresses(&r), ["pupil.ünï@example.net"]);
    }

    /// A DSN as a test writes it: the per-message block and the given recipient blocks.
    fn dsn(blocks: &[&str]) -> Vec<u8> {
        let mut out = String::from(
            "From: MAILER-DAEMON@mail.example.net\n\
             To: bounces+abc123@bounce.example.org\n\
             Auto-Submitted: auto-replied\n\
             Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\n\n\
             --b\nContent-Type: text/plain\n\nIt failed.\n\n\
             --b\nContent-Type: message/delivery-status\n\n\
             Reporting-MTA: dns; mail.example.net\n",
        );
        for block in blocks {
            out.push('\n');
            out.push_str(block);
            out.push('\n');
        }
        out.push_str("\n--b--\n");
        out.into_bytes()
    }

    #[test]
    fn policy_full_and_too_big_failures_are_soft_and_others_hard() {
        let cases = [
            ("5.1.1", Kind::Hard),
            ("5.1.10", Kind::Hard),
            ("5.0.0", Kind::Hard),
            ("5.2.1", Kind::Hard),
            ("5.7.1", Kind::Soft),
            ("5.7.26", Kind::Soft),
            ("5.2.2", Kind::Soft),
            ("5.3.4", Kind::Soft),
            ("4.4.1", Kind::Soft),
        ];
        for (status, kind) in cases {
            let block =
                format!("Final-Recipient: rfc822; a@example.com\nAction: failed\nStatus: {status}");
            let r = read(&dsn(&[&block]));
            assert_eq!(r.kind, kind, "{status}");
            assert_eq!(r.status.as_deref(), Some(status));
        }
    }

    #[test]
    fn a_generic_5_0_0_takes_the_diagnostics_own_code() {
        let r = read(&dsn(&["Final-Recipient: rfc822; a@example.com\nAction: failed\nStatus: 5.0.0\n\
             Diagnostic-Code: X-Postfix; host mx.example.com said: 554 5.7.1 Message rejected as spam"]));
        assert_eq!(r.kind, Kind::Soft);
        assert_eq!(r.status.as_deref(), Some("5.7.1"));
        assert_eq!(
            r.diagnostic.as_deref(),
            Some("host mx.example.com said: 554 5.7.1 Message rejected as spam")
        );
    }

    #[test]
    fn the_whole_verdict_is_the_worst_recipient_and_its_status_decides() {
        let r = read(&dsn(&[
            "Final-Recipient: rfc822; delivered@example.com\nAction: delivered\nStatus: 2.0.0",
            "Final-Recipient: rfc822; later@example.com\nAction: delayed\nStatus: 4.4.7",
            "Final-Recipient: rfc822; gone@example.com\nAction: failed\nStatus: 5.1.1\n\
             Diagnostic-Code: smtp; 550 5.1.1 no such user",
        ]));
        assert_eq!(r.kind, Kind::Hard);
        assert_eq!(r.status.as_deref(), Some("5.1.1"));
        assert_eq!(r.diagnostic.as_deref(), Some("550 5.1.1 no such user"));
        let kinds: Vec<Kind> = r.recipients.iter().map(|r| r.kind).collect();
        assert_eq!(kinds, [Kind::AutoReply, Kind::Soft, Kind::Hard]);
        assert_eq!(r.return_paths, [VERP]);
    }

    #[test]
    fn original_recipient_stands_in_for_a_missing_final_recipient() {
        let r = read(&dsn(&[
            "Original-Recipient: rfc822;<old@example.com>\nAction: failed\nStatus: 5.1.1",
        ]));
        assert_eq!(addresses(&r), ["old@example.com"]);
    }

    #[test]
    fn a_report_without_usable_recipient_blocks_is_read_as_a_plain_bounce() {
        let raw = b"From: MAILER-DAEMON@mail.example.net\n\
            To: bounces+abc123@bounce.example.org\n\
            Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\n\n\
            --b\nContent-Type: text/plain\n\n<x@example.com>: host mx said: 550 No such mailbox\n\n\
            --b\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mail.example.net\n\n\
            --b--\n";
        let r = read(raw);
        assert_eq!(r.kind, Kind::Hard);
        assert_eq!(
            r.status.as_deref(),
            Some("5.0.0"),
            "derived from the bare 550"
        );
        assert_eq!(addresses(&r), ["x@example.com"]);
    }

    #[test]
    fn plain_bounces_quote_a_reply_or_say_so_in_words() {
        let bounce = |subject: &str, body: &str| {
            format!("From: postmaster@example.net\nSubject: {subject}\nTo: {VERP}\n\n{body}\n")
        };
        let cases = [
            (
                "failure notice",
                "Remote host said: 550 5.1.1 <a@example.com>: no mailbox",
                Kind::Hard,
                Some("5.1.1"),
            ),
            (
                "failure notice",
                "<a@example.com>:\n452 4.2.2 mailbox over quota",
                Kind::Soft,
                Some("4.2.2"),
            ),
            (
                "Returned mail",
                "   <<< 554 5.7.1 Spam message rejected",
                Kind::Soft,
                Some("5.7.1"),
            ),
            (
                "Returned mail",
                "   <<< 552 Message size exceeds limit",
                Kind::Soft,
                Some("5.0.0"),
            ),
            (
                "Undeliverable: hello",
                "The mailbox does not exist.",
                Kind::Hard,
                None,
            ),
            (
                "Undeliverable: hello",
                "Something went wrong; call 0800 550 1234.",
                Kind::Unparsed,
                None,
            ),
        ];
        for (subject, body, kind, status) in cases {
            let r = read(bounce(subject, body).as_bytes());
            assert_eq!(r.kind, kind, "{body}");
            assert_eq!(r.status.as_deref(), status, "{body}");
            assert_eq!(r.return_paths, [VERP]);
        }
    }

    #[test]
    fn auto_replies_are_recognised_by_headers_or_subject() {
        let cases = [
            "Auto-Submitted: auto-generated\nSubject: Thanks",
            "X-Autoreply: yes\nSubject: Thanks",
            "X-Autorespond: yes\nSubject: Thanks",
            "Precedence: auto_reply\nSubject: Thanks",
            "X-Auto-Response-Suppress: All\nSubject: Réponse automatique : bonjour",
            "Subject: Out of Office: Prevent newsletter",
            "Subject: AUTO: Away until Monday",
            "Subject: Abwesenheitsnotiz: Prevent",
        ];
        for headers in cases {
            let raw = format!("From: a@example.com\nTo: {VERP}\n{headers}\n\nAway.\n");
            assert_eq!(read(raw.as_bytes()).kind, Kind::AutoReply, "{headers}");
        }
        let not = format!(
            "From: a@example.com\nTo: {VERP}\nAuto-Submitted: no\nSubject: Re: hi\n\nHi.\n"
        );
        assert_eq!(read(not.as_bytes()).kind, Kind::Unparsed);
    }

    #[test]
    fn feedback_types_other_than_complaints() {
        for (kind_field, kind) in [("not-spam", Kind::AutoReply), ("Fraud", Kind::Complaint)] {
            let raw = String::from_utf8(fixture!("arf-abuse").to_vec())
                .unwrap()
                .replace(
                    "Feedback-Type: abuse",
                    &format!("Feedback-Type: {kind_field}"),
                );
            let r = read(raw.as_bytes());
            assert_eq!(r.kind, kind);
            assert_eq!(
                r.feedback_type.as_deref(),
                Some(kind_field.to_lowercase().as_str())
            );
        }
    }

    #[test]
    fn diagnostics_are_cut_to_the_limit() {
        let long = "x".repeat(2000);
        let block = format!("Final-Recipient: rfc822; a@example.com\nAction: failed\nStatus: 5.1.1\nDiagnostic-Code: smtp; 550 5.1.1 {long}");
        let r = read(&dsn(&[&block]));
        assert_eq!(r.diagnostic.unwrap().chars().count(), MAX_DIAGNOSTIC);
    }

    #[test]
    fn kinds_have_stable_names() {
        let names: Vec<&str> = [
            Kind::Hard,
            Kind::Soft,
            Kind::Complaint,
            Kind::AutoReply,
            Kind::Unparsed,
        ]
        .into_iter()
        .map(Kind::as_str)
        .collect();
        assert_eq!(
            names,
            ["hard", "soft", "complaint", "auto_reply", "unparsed"]
        );
    }

    #[test]
    fn nothing_and_nonsense_are_unparsed() {
        for raw in [&b""[..], b"\n\n\n", b"\xff\xfe\x00", b"Subject: \n\n"] {
            let r = read(raw);
            assert_eq!(r.kind, Kind::Unparsed);
            assert!(r.return_paths.is_empty());
        }
    }

    #[test]
    fn messages_nested_very_deep_do_not_overflow_the_stack() {
        let raw = format!(
            "To: {VERP}\n{}",
            "Content-Type: message/rfc822\n\n".repeat(50_000)
        );
        // A worker thread's stack, not the main thread's larger one.
        let r = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || read(raw.as_bytes()))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(r.return_paths, [VERP]);
    }

    #[test]
    fn encoded_attached_messages_nested_very_deep_do_not_overflow_the_stack() {
        use base64::Engine;
        let inner = "Content-Type: message/rfc822\n\n".repeat(50_000);
        let encoded = base64::engine::general_purpose::STANDARD.encode(inner);
        let raw = format!(
            "To: {VERP}\nContent-Type: multipart/mixed; boundary=b\n\n--b\n\
             Content-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\n{encoded}\n--b--\n"
        );
        let r = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || read(raw.as_bytes()))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(r.return_paths, [VERP]);
    }

    /// What `mail-parser` answers with a `debug_assert!` (found by the proptest below): the
    /// Gmail bounce whose first header name starts with a NUL and whose attached message starts
    /// with a line that ends with the boundary, then a message/rfc822 header.
    fn mail_parser_asserts() -> Vec<u8> {
        String::from_utf8(fixture!("gmail-does-not-exist").to_vec())
            .unwrap()
            .replace(
                "Content-Type: message/rfc822\n\nReturn-Path",
                "Content-Type: message/rfc822\n\n0000000a1b2c3d4e5f60718\n\
                 Content-Type: message/rfc822\n\nReturn-Path",
            )
            .replacen("Delivered-To:", "\0elivered-To:", 1)
            .into_bytes()
    }

    #[test]
    fn mail_parsers_debug_assertions_leave_the_headers_and_the_text() {
        let raw = mail_parser_asserts();
        let parsed = std::panic::catch_unwind(|| MessageParser::default().parse(&raw).is_some());
        assert_eq!(
            parsed.is_err(),
            cfg!(debug_assertions),
            "the defect is still there"
        );
        let r = read(&raw);
        assert_eq!(r.return_paths, [VERP]);
        assert_eq!(r.kind, Kind::Hard, "from the quoted reply in the text");
        assert_eq!(r.status.as_deref(), Some("5.1.1"));
    }

    /// A fixture with a few bytes changed, cut, or a piece repeated.
    fn mutated() -> impl Strategy<Value = Vec<u8>> {
        (
            prop::sample::select(FIXTURES.to_vec()),
            prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 0..16),
        )
            .prop_map(|(raw, edits)| {
                let mut raw = raw.to_vec();
                for (at, byte, op) in edits {
                    if raw.is_empty() {
                        break;
                    }
                    let i = at.index(raw.len());
                    match op {
                        0 => raw[i] = byte,
                        1 => {
                            raw.remove(i);
                        }
                        2 => raw.insert(i, byte),
                        _ => {
                            let end = (i + usize::from(byte)).min(raw.len());
                            let piece = raw[i..end].to_vec();
                            raw.splice(i..i, piece);
                        }
                    }
                }
                raw
            })
    }

    proptest! {
        // 256 cases by default (`make test`); `make faults` sets PROPTEST_CASES for a long run.
        #[test]
        fn arbitrary_bytes_never_panic(raw in prop::collection::vec(any::<u8>(), 0..4096)) {
            let _ = interpret(&raw, &ours);
        }

        #[test]
        fn mutated_fixtures_never_panic(raw in mutated()) {
            let r = interpret(&raw, &ours);
            prop_assert!(r.diagnostic.as_ref().is_none_or(|d| d.chars().count() <= MAX_DIAGNOSTIC));
            prop_assert!(r.return_paths.iter().all(|a| ours(a)));
        }
    }
}
