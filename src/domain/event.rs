//! The event envelope and the `data` of each event kind, parsed into domain types.
//!
//! Parsing is done by hand over `serde_json::Value` rather than with derived `Deserialize`, so that
//! each refusal names its field the way the contract asks (`data.email: not an email address`), and
//! so that unknown fields are ignored everywhere (forward compatibility).

use super::newsletter::{
    ErasureRequested, NewsletterPublished, SubscriptionCancelled, SubscriptionRequested,
};
use super::text::{multi_line, single_line, FieldError};
use super::{EmailAddress, RegionId};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use std::fmt;
use uuid::Uuid;

/// Limits from the contract.
pub const MAX_NAME: usize = 200;
pub const MAX_BODY: usize = 10_000;
/// Phone numbers and ids are short; a long one is a mistake.
pub const MAX_SHORT: usize = 64;

/// The stable `x-rpec-error` codes a dead-lettered message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    MalformedJson,
    UnknownType,
    UnsupportedVersion,
    InvalidPayload,
    TooLarge,
    UnknownSession,
    /// A claim for an enquiry not yet known (events can arrive out of order): waited for like
    /// an unknown session, then dead-lettered.
    UnknownEnquiry,
    /// A passing failure that did not pass within the retry budget.
    RetriesExhausted,
    /// Handling crashed (a bug in the worker, not a fault of the event): it was not applied.
    HandlerFailed,
}

impl ErrorCode {
    /// Every code, for the contract's documents and their tests.
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::MalformedJson,
        ErrorCode::UnknownType,
        ErrorCode::UnsupportedVersion,
        ErrorCode::InvalidPayload,
        ErrorCode::TooLarge,
        ErrorCode::UnknownSession,
        ErrorCode::UnknownEnquiry,
        ErrorCode::RetriesExhausted,
        ErrorCode::HandlerFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedJson => "malformed_json",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::InvalidPayload => "invalid_payload",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::UnknownSession => "unknown_session",
            ErrorCode::UnknownEnquiry => "unknown_enquiry",
            ErrorCode::RetriesExhausted => "retries_exhausted",
            ErrorCode::HandlerFailed => "handler_failed",
        }
    }
}

/// A message that can never succeed, with the reason to put on the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub code: ErrorCode,
    pub detail: String,
    /// The `type` of the envelope, when it could be read (for metrics).
    pub event_type: Option<String>,
}

impl ParseError {
    fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        ParseError {
            code,
            detail: detail.into(),
            event_type: None,
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.detail)
    }
}

impl From<FieldError> for ParseError {
    fn from(e: FieldError) -> Self {
        ParseError::new(ErrorCode::InvalidPayload, e.to_string())
    }
}

/// The event kinds this worker handles; its queue is bound to exactly these routing keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    ContactSubmitted,
    SessionScheduled,
    SessionUpdated,
    SessionCancelled,
    RegistrationCreated,
    RegistrationCancelled,
    SubscriptionRequested,
    SubscriptionCancelled,
    NewsletterPublished,
    PersonErasureRequested,
    EnquiryClaimed,
}

impl EventType {
    pub const ALL: [EventType; 11] = [
        EventType::ContactSubmitted,
        EventType::SessionScheduled,
        EventType::SessionUpdated,
        EventType::SessionCancelled,
        EventType::RegistrationCreated,
        EventType::RegistrationCancelled,
        EventType::SubscriptionRequested,
        EventType::SubscriptionCancelled,
        EventType::NewsletterPublished,
        EventType::PersonErasureRequested,
        EventType::EnquiryClaimed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::ContactSubmitted => "contact.submitted",
            EventType::SessionScheduled => "session.scheduled",
            EventType::SessionUpdated => "session.updated",
            EventType::SessionCancelled => "session.cancelled",
            EventType::RegistrationCreated => "registration.created",
            EventType::RegistrationCancelled => "registration.cancelled",
            EventType::SubscriptionRequested => "subscription.requested",
            EventType::SubscriptionCancelled => "subscription.cancelled",
            EventType::NewsletterPublished => "newsletter.published",
            EventType::PersonErasureRequested => "person.erasure_requested",
            EventType::EnquiryClaimed => "enquiry.claimed",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl Event {
    /// The address of the person an event would record (their enquiry, their registration,
    /// their subscription): what an earlier erasure of that address must keep out.
    pub fn personal_address(&self) -> Option<&EmailAddress> {
        match self {
            Event::ContactSubmitted(c) => Some(&c.email),
            Event::RegistrationCreated(r) => Some(&r.email),
            Event::SubscriptionRequested(s) => Some(&s.email),
            Event::SessionScheduled(_)
            | Event::SessionUpdated(_)
            | Event::SessionCancelled(_)
            | Event::RegistrationCancelled(_)
            | Event::SubscriptionCancelled(_)
            | Event::NewsletterPublished(_)
            | Event::PersonErasureRequested(_)
            // The claimer is a coordinator, not the person an erasure is about.
            | Event::EnquiryClaimed(_) => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Envelope {
    pub id: Uuid,
    pub event_type: EventType,
    pub occurred_at: DateTime<Utc>,
    pub event: Event,
}

#[derive(Debug, Clone)]
pub enum Event {
    ContactSubmitted(ContactSubmitted),
    SessionScheduled(SessionDetails),
    SessionUpdated(SessionDetails),
    SessionCancelled(SessionCancelled),
    RegistrationCreated(RegistrationCreated),
    RegistrationCancelled(RegistrationCancelled),
    SubscriptionRequested(SubscriptionRequested),
    SubscriptionCancelled(SubscriptionCancelled),
    NewsletterPublished(NewsletterPublished),
    PersonErasureRequested(ErasureRequested),
    EnquiryClaimed(EnquiryClaimed),
}

impl Envelope {
    /// Parses a message body. `max_bytes` is the contract's 256 KiB limit.
    pub fn parse(body: &[u8], max_bytes: usize) -> Result<Envelope, ParseError> {
        if body.len() > max_bytes {
            return Err(ParseError::new(
                ErrorCode::TooLarge,
                format!("body is {} bytes; the limit is {max_bytes}", body.len()),
            ));
        }
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            ParseError::new(ErrorCode::MalformedJson, format!("not valid JSON: {e}"))
        })?;
        let Value::Object(root) = value else {
            return Err(ParseError::new(
                ErrorCode::MalformedJson,
                "the envelope must be a JSON object",
            ));
        };
        let root = Fields::new(&root, "");
        let type_name = root.required_str("type", MAX_NAME)?;
        let with_type = |mut e: ParseError| {
            e.event_type = Some(type_name.clone());
            e
        };
        let event_type = EventType::parse(&type_name).ok_or_else(|| {
            with_type(ParseError::new(
                ErrorCode::UnknownType,
                "type: not an event this worker handles",
            ))
        })?;
        let version = root.map.get("version");
        if version != Some(&Value::from(1)) {
            // Only a small number is shown back: a detail never carries text from the event.
            let shown = match version {
                None => "missing".to_string(),
                Some(Value::Number(n)) if n.to_string().len() <= 12 => n.to_string(),
                Some(_) => "not a supported number".to_string(),
            };
            return Err(with_type(ParseError::new(
                ErrorCode::UnsupportedVersion,
                format!("version: {shown} is not supported (expected 1)"),
            )));
        }
        let parse_rest = || -> Result<Envelope, FieldError> {
            let id = root.uuid("id")?;
            let occurred_at = root.timestamp("occurred_at")?;
            let data = root.object("data")?;
            let event = match event_type {
                EventType::ContactSubmitted => {
                    Event::ContactSubmitted(ContactSubmitted::parse(&data)?)
                }
                EventType::SessionScheduled => {
                    Event::SessionScheduled(SessionDetails::parse(&data)?)
                }
                EventType::SessionUpdated => Event::SessionUpdated(SessionDetails::parse(&data)?),
                EventType::SessionCancelled => Event::SessionCancelled(SessionCancelled {
                    session_id: data.session_id("session_id")?,
                    reason: data.optional_text("reason", MAX_BODY)?,
                }),
                EventType::RegistrationCreated => Event::RegistrationCreated(RegistrationCreated {
                    registration_id: data.required_str("registration_id", MAX_NAME)?,
                    session_id: data.session_id("session_id")?,
                    name: data.required_str("name", MAX_NAME)?,
                    email: data.email("email")?,
                }),
                EventType::RegistrationCancelled => {
                    Event::RegistrationCancelled(RegistrationCancelled {
                        registration_id: data.required_str("registration_id", MAX_NAME)?,
                    })
                }
                EventType::SubscriptionRequested => {
                    Event::SubscriptionRequested(SubscriptionRequested::parse(&data)?)
                }
                EventType::SubscriptionCancelled => {
                    Event::SubscriptionCancelled(SubscriptionCancelled::parse(&data)?)
                }
                EventType::NewsletterPublished => {
                    Event::NewsletterPublished(NewsletterPublished::parse(&data)?)
                }
                EventType::PersonErasureRequested => {
                    Event::PersonErasureRequested(ErasureRequested::parse(&data)?)
                }
                EventType::EnquiryClaimed => Event::EnquiryClaimed(EnquiryClaimed {
                    enquiry_id: data.required_str("enquiry_id", MAX_NAME)?,
                    by: data.email("by")?,
                    note: data.optional_text("note", MAX_BODY)?,
                }),
            };
            Ok(Envelope {
                id,
                event_type,
                occurred_at,
                event,
            })
        };
        parse_rest().map_err(|e| with_type(e.into()))
    }
}

/// The setting an enquirer works in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Setting {
    School,
    FurtherEducation,
    HigherEducation,
    IndependentTrainingProvider,
    Other,
}

impl Setting {
    const ALL: [(&'static str, Setting, &'static str); 5] = [
        ("school", Setting::School, "School"),
        (
            "further-education",
            Setting::FurtherEducation,
            "Further education",
        ),
        (
            "higher-education",
            Setting::HigherEducation,
            "Higher education",
        ),
        (
            "independent-training-provider",
            Setting::IndependentTrainingProvider,
            "Independent training provider",
        ),
        ("other", Setting::Other, "Other"),
    ];

    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|e| e.1 == self)
            .map_or("other", |e| e.0)
    }

    pub fn label(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|e| e.1 == self)
            .map_or("Other", |e| e.2)
    }

    /// The setting with this id (as stored), if any.
    pub fn parse(s: &str) -> Option<Setting> {
        Self::ALL.iter().find(|e| e.0 == s).map(|e| e.1)
    }
}

/// What an enquiry is about: the uses of the contact form that the page lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Topic {
    Training,
    Newsletter,
    ComplexCase,
    PreventAdvocate,
    LocalRisk,
    GoodPracticeForum,
    NewProviderForumAccess,
    Other,
}

impl Topic {
    const ALL: [(&'static str, Topic, &'static str); 8] = [
        (
            "training",
            Topic::Training,
            "Training available in the region",
        ),
        (
            "newsletter",
            Topic::Newsletter,
            "Signing up to the regional newsletter",
        ),
        (
            "complex-case",
            Topic::ComplexCase,
            "Help with a complex radicalisation case",
        ),
        (
            "prevent-advocate",
            Topic::PreventAdvocate,
            "Finding a Prevent advocate for a higher education setting",
        ),
        (
            "local-risk",
            Topic::LocalRisk,
            "Understanding the local risk",
        ),
        (
            "good-practice-forum",
            Topic::GoodPracticeForum,
            "Regional good practice forums",
        ),
        (
            "new-provider-forum-access",
            Topic::NewProviderForumAccess,
            "Access to good practice forums for a new provider",
        ),
        ("other", Topic::Other, "Something else"),
    ];

    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|e| e.1 == self)
            .map_or("other", |e| e.0)
    }

    pub fn label(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|e| e.1 == self)
            .map_or("Other", |e| e.2)
    }

    pub fn is_urgent(self) -> bool {
        self == Topic::ComplexCase
    }

    /// The topic with this id (as the contract and the database write it), if any.
    pub fn parse(s: &str) -> Option<Topic> {
        Self::ALL.iter().find(|e| e.0 == s).map(|e| e.1)
    }

    /// Every topic id, in the page's order.
    pub fn ids() -> impl Iterator<Item = &'static str> {
        Self::ALL.iter().map(|e| e.0)
    }
}

/// `contact.submitted`: the coordinator contact form.
#[derive(Debug, Clone)]
pub struct ContactSubmitted {
    pub enquiry_id: String,
    pub name: String,
    pub email: EmailAddress,
    pub organisation: String,
    pub setting: Setting,
    pub topic: Topic,
    pub message: String,
    pub phone: Option<String>,
    pub region: Option<RegionId>,
    pub area: Option<String>,
}

impl ContactSubmitted {
    fn parse(data: &Fields<'_>) -> Result<Self, FieldError> {
        Ok(ContactSubmitted {
            enquiry_id: data.required_str("enquiry_id", MAX_NAME)?,
            name: data.required_str("name", MAX_NAME)?,
            email: data.email("email")?,
            organisation: data.required_str("organisation", MAX_NAME)?,
            setting: data.one_of("setting", &Setting::ALL.map(|e| (e.0, e.1)))?,
            topic: data.one_of("topic", &Topic::ALL.map(|e| (e.0, e.1)))?,
            message: data.required_text("message", MAX_BODY)?,
            phone: data.optional_str("phone", MAX_SHORT)?,
            region: data.optional_region("region")?,
            area: data.optional_str("area", MAX_NAME)?,
        })
    }
}

/// The longest a session may last.
pub const MAX_SESSION_HOURS: i64 = 12;

/// `session.scheduled` / `session.updated`: a virtual training session.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionDetails {
    pub session_id: String,
    pub title: String,
    /// Display text, e.g. "Designated safeguarding leads".
    pub audience: String,
    /// None: a national session open to everyone.
    pub region: Option<RegionId>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub registration_url: String,
    pub joining_url: Option<String>,
    pub description: Option<String>,
}

impl SessionDetails {
    fn parse(data: &Fields<'_>) -> Result<Self, FieldError> {
        let starts_at = data.timestamp("starts_at")?;
        let ends_at = data.timestamp("ends_at")?;
        if ends_at <= starts_at {
            return Err(FieldError::new(
                "data.ends_at",
                "must be after data.starts_at",
            ));
        }
        if ends_at - starts_at > chrono::Duration::hours(MAX_SESSION_HOURS) {
            return Err(FieldError::new(
                "data.ends_at",
                format!("a session lasts at most {MAX_SESSION_HOURS} hours"),
            ));
        }
        Ok(SessionDetails {
            session_id: data.session_id("session_id")?,
            title: data.required_str("title", MAX_NAME)?,
            audience: data.required_str("audience", MAX_NAME)?,
            region: data.optional_region("region")?,
            starts_at,
            ends_at,
            registration_url: data
                .optional_url("registration_url")?
                .ok_or_else(|| FieldError::new("data.registration_url", "is required"))?,
            joining_url: data.optional_url("joining_url")?,
            description: data.optional_text("description", MAX_BODY)?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct SessionCancelled {
    pub session_id: String,
    pub reason: Option<String>,
}

#[derive(Debug, Clone)]
pub struct RegistrationCreated {
    pub registration_id: String,
    pub session_id: String,
    pub name: String,
    pub email: EmailAddress,
}

#[derive(Debug, Clone)]
pub struct RegistrationCancelled {
    pub registration_id: String,
}

/// `enquiry.claimed`: a website or case system that records claims itself says who took an
/// enquiry, as a coordinator's claim link does.
#[derive(Debug, Clone)]
pub struct EnquiryClaimed {
    pub enquiry_id: String,
    /// The mailbox (or person) who will answer it.
    pub by: EmailAddress,
    pub note: Option<String>,
}

/// A JSON object being read field by field; `prefix` makes errors name the full path.
pub(crate) struct Fields<'a> {
    map: &'a Map<String, Value>,
    prefix: String,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(map: &'a Map<String, Value>, prefix: &str) -> Self {
        Fields {
            map,
            prefix: prefix.to_owned(),
        }
    }

    fn path(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    pub(crate) fn err(&self, key: &str, reason: impl Into<String>) -> FieldError {
        FieldError::new(self.path(key), reason)
    }

    /// The raw string, or None when absent or null.
    fn raw_str(&self, key: &str) -> Result<Option<&'a str>, FieldError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(self.err(key, "must be a string")),
        }
    }

    fn limited(&self, key: &str, s: String, max: usize) -> Result<String, FieldError> {
        let len = s.chars().count();
        if len > max {
            return Err(self.err(key, format!("too long ({len} characters; at most {max})")));
        }
        Ok(s)
    }

    /// A required single-line string, trimmed, with line breaks folded into spaces.
    pub(crate) fn required_str(&self, key: &str, max: usize) -> Result<String, FieldError> {
        self.optional_str(key, max)?
            .ok_or_else(|| self.err(key, "is required"))
    }

    /// An optional single-line string; empty after trimming counts as absent.
    pub(crate) fn optional_str(&self, key: &str, max: usize) -> Result<Option<String>, FieldError> {
        match self.raw_str(key)? {
            None => Ok(None),
            Some(s) => {
                let s = single_line(s);
                if s.is_empty() {
                    Ok(None)
                } else {
                    self.limited(key, s, max).map(Some)
                }
            }
        }
    }

    /// A required multi-line text (a message body), trimmed, line breaks kept.
    pub(crate) fn required_text(&self, key: &str, max: usize) -> Result<String, FieldError> {
        let s = multi_line(
            self.raw_str(key)?
                .ok_or_else(|| self.err(key, "is required"))?,
        );
        if s.is_empty() {
            return Err(self.err(key, "is required"));
        }
        self.limited(key, s, max)
    }

    /// An optional multi-line text; empty after trimming counts as absent.
    pub(crate) fn optional_text(
        &self,
        key: &str,
        max: usize,
    ) -> Result<Option<String>, FieldError> {
        match self.raw_str(key)? {
            None => Ok(None),
            Some(s) => {
                let s = multi_line(s);
                if s.is_empty() {
                    Ok(None)
                } else {
                    self.limited(key, s, max).map(Some)
                }
            }
        }
    }

    /// A session id: 1 to 64 of `[A-Za-z0-9._:-]` (it ends up in calendar UIDs and URLs).
    pub(crate) fn session_id(&self, key: &str) -> Result<String, FieldError> {
        let s = self.raw_str(key)?.map(str::trim).unwrap_or_default();
        if s.is_empty() {
            return Err(self.err(key, "is required"));
        }
        let valid = s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'));
        if !valid {
            return Err(self.err(
                key,
                "must be 1 to 64 of A-Z, a-z, 0-9, '.', '_', ':' and '-'",
            ));
        }
        Ok(s.to_owned())
    }

    pub(crate) fn email(&self, key: &str) -> Result<EmailAddress, FieldError> {
        let s = self
            .raw_str(key)?
            .ok_or_else(|| self.err(key, "is required"))?;
        EmailAddress::parse(s).map_err(|reason| self.err(key, reason))
    }

    pub(crate) fn optional_region(&self, key: &str) -> Result<Option<RegionId>, FieldError> {
        match self.raw_str(key)?.map(str::trim) {
            None | Some("") => Ok(None),
            Some(s) => s.parse().map(Some).map_err(|reason| self.err(key, reason)),
        }
    }

    pub(crate) fn one_of<T: Copy>(
        &self,
        key: &str,
        choices: &[(&str, T)],
    ) -> Result<T, FieldError> {
        let s = self
            .raw_str(key)?
            .map(str::trim)
            .ok_or_else(|| self.err(key, "is required"))?;
        choices
            .iter()
            .find(|(name, _)| *name == s)
            .map(|(_, v)| *v)
            .ok_or_else(|| {
                let names: Vec<&str> = choices.iter().map(|c| c.0).collect();
                self.err(key, format!("is not one of {}", names.join(", ")))
            })
    }

    pub(crate) fn uuid(&self, key: &str) -> Result<Uuid, FieldError> {
        let s = self
            .raw_str(key)?
            .ok_or_else(|| self.err(key, "is required"))?;
        Uuid::parse_str(s.trim()).map_err(|_| self.err(key, "not a UUID"))
    }

    pub(crate) fn timestamp(&self, key: &str) -> Result<DateTime<Utc>, FieldError> {
        let s = self
            .raw_str(key)?
            .ok_or_else(|| self.err(key, "is required"))?;
        DateTime::parse_from_rfc3339(s.trim())
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| self.err(key, "not an RFC 3339 time with an offset"))
    }

    pub(crate) fn object(&self, key: &str) -> Result<Fields<'a>, FieldError> {
        match self.map.get(key) {
            Some(Value::Object(m)) => Ok(Fields::new(m, &format!("{}.", self.path(key)))),
            None | Some(Value::Null) => Err(self.err(key, "is required")),
            Some(_) => Err(self.err(key, "must be an object")),
        }
    }

    /// An optional list of region ids (`data.regions`); absent or null is None, an empty list
    /// is refused (it would mean "none", which no one asks for). Repeats are dropped.
    pub(crate) fn optional_regions(&self, key: &str) -> Result<Option<Vec<RegionId>>, FieldError> {
        let items = match self.map.get(key) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Array(items)) => items,
            Some(_) => return Err(self.err(key, "must be a list of region ids")),
        };
        if items.is_empty() {
            return Err(self.err(key, "must name at least one region"));
        }
        let mut regions = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let at = format!("{key}[{i}]");
            let region: RegionId = item
                .as_str()
                .ok_or_else(|| self.err(&at, "must be a string"))?
                .trim()
                .parse()
                .map_err(|reason: String| self.err(&at, reason))?;
            if !regions.contains(&region) {
                regions.push(region);
            }
        }
        Ok(Some(regions))
    }

    /// A required, non-empty list of objects (`data.sections`); each is read with its own path
    /// (`data.sections[0].heading`).
    pub(crate) fn objects(&self, key: &str) -> Result<Vec<Fields<'a>>, FieldError> {
        let items = match self.map.get(key) {
            None | Some(Value::Null) => return Err(self.err(key, "is required")),
            Some(Value::Array(items)) => items,
            Some(_) => return Err(self.err(key, "must be a list")),
        };
        if items.is_empty() {
            return Err(self.err(key, "must hold at least one item"));
        }
        items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::Object(m) => Ok(Fields::new(m, &format!("{}[{i}].", self.path(key)))),
                _ => Err(self.err(&format!("{key}[{i}]"), "must be an object")),
            })
            .collect()
    }

    /// An optional link: at most 2,000 characters, `https` (or `http` for this machine only),
    /// no white space. Returned in its normalised form (percent-encoded where needed).
    pub(crate) fn optional_url(&self, key: &str) -> Result<Option<String>, FieldError> {
        let Some(raw) = self.raw_str(key)?.map(str::trim).filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        super::url::parse_link(raw)
            .map(Some)
            .map_err(|reason| self.err(key, reason))
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_example_enquiry_claimed_parses_and_a_bad_claimer_is_named() {
        let body = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/events/enquiry-claimed.json"
        ))
        .unwrap();
        let e = Envelope::parse(&body, 262_144).unwrap();
        assert_eq!(e.event_type.as_str(), "enquiry.claimed");
        let Event::EnquiryClaimed(c) = e.event else {
            panic!("not a claim")
        };
        assert_eq!(c.enquiry_id, "enq-2024-000187");
        assert_eq!(c.by.as_str(), "rpec.north-west@example.org");
        assert!(c.note.is_some());
        let bad = String::from_utf8(body).unwrap().replace(
            "rpec.north-west@example.org",
            "North-West <rpec@example.org>",
        );
        let err = Envelope::parse(bad.as_bytes(), 262_144).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidPayload);
        assert!(err.detail.starts_with("data.by:"), "{}", err.detail);
        assert_eq!(ErrorCode::UnknownEnquiry.as_str(), "unknown_enquiry");
    }

    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// A value that might stand in any field: the marker (which a refusal must never echo), in
    /// strings of many shapes, or another JSON type altogether.
    fn any_field() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(json!("MARKER")),
            Just(json!("MARKER\r\nBcc: x@evil.example")),
            Just(json!(format!("MARKER{}", "x".repeat(20_000)))),
            Just(json!("  ")),
            Just(json!("MARKER@example.org")),
            Just(json!("\u{202e}MARKER")),
            Just(json!(null)),
            Just(json!(12345678901234567890u64)),
            Just(json!(-1.5)),
            Just(json!(true)),
            Just(json!(["MARKER"])),
            Just(json!({"MARKER": "MARKER"})),
        ]
    }

    /// Fields of every event type, valid ones and hostile ones mixed.
    fn any_event() -> impl Strategy<Value = Value> {
        let types: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
        let keys = vec![
            "enquiry_id",
            "name",
            "email",
            "organisation",
            "setting",
            "topic",
            "message",
            "phone",
            "region",
            "area",
            "session_id",
            "title",
            "audience",
            "starts_at",
            "ends_at",
            "registration_url",
            "joining_url",
            "description",
            "reason",
            "registration_id",
            "newsletter_id",
            "subject",
            "preheader",
            "sections",
            "web_url",
            "regions",
        ];
        (
            prop::sample::select(types),
            prop::collection::btree_map(prop::sample::select(keys), any_field(), 0..12),
            any_field(),
        )
            .prop_map(|(event_type, fields, version)| {
                let mut data = valid();
                for (k, v) in fields {
                    data[k] = v;
                }
                json!({
                    "id": "3b0c8a52-8f43-4a8e-9d0e-5c1f2f6b7a01",
                    "type": event_type,
                    "version": if version == json!(true) { json!(1) } else { version },
                    "occurred_at": "2024-10-01T12:00:00Z",
                    "data": data
                })
            })
    }

    proptest! {
        /// Hostile envelopes of every type: parsing never panics, and a refusal names the field
        /// and the rule in a short detail without the value.
        #[test]
        fn any_envelope_parses_or_is_refused_without_echoing_it(event in any_event()) {
            let body = serde_json::to_vec(&event).unwrap();
            if let Err(e) = Envelope::parse(&body, LIMIT) {
                prop_assert!(e.detail.len() <= 1024, "{}", e.detail.len());
                prop_assert!(!e.detail.contains("MARKER"), "{}: {}", e.code.as_str(), e.detail);
            }
        }

        /// Arbitrary bytes: never a panic, always a code.
        #[test]
        fn any_bytes_are_parsed_or_refused(body in prop::collection::vec(any::<u8>(), 0..2048)) {
            let _ = Envelope::parse(&body, LIMIT);
        }
    }

    const LIMIT: usize = 256 * 1024;

    fn contact(data: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "id": "3b0c8a52-8f43-4a8e-9d0e-5c1f2f6b7a01",
            "type": "contact.submitted",
            "version": 1,
            "occurred_at": "2024-10-03T10:15:00Z",
            "data": data,
            "something_new": true
        }))
        .unwrap()
    }

    fn valid() -> Value {
        json!({
            "enquiry_id": "enq-1", "name": " Sam ", "email": "sam@example.org",
            "organisation": "Riverside", "setting": "school", "topic": "complex-case",
            "message": "Line one\r\nLine two", "area": "Cumbria", "phone": "", "future": 1
        })
    }

    fn code_and_detail(body: &[u8]) -> (&'static str, String) {
        code_and_detail_at(body, LIMIT)
    }

    fn code_and_detail_at(body: &[u8], limit: usize) -> (&'static str, String) {
        let e = Envelope::parse(body, limit).unwrap_err();
        (e.code.as_str(), e.detail)
    }

    #[test]
    fn parses_a_contact_enquiry_and_ignores_unknown_fields() {
        let env = Envelope::parse(&contact(valid()), LIMIT).unwrap();
        let Event::ContactSubmitted(c) = env.event else {
            panic!("an enquiry")
        };
        assert_eq!(c.name, "Sam");
        assert_eq!(c.topic, Topic::ComplexCase);
        assert_eq!(c.message, "Line one\nLine two");
        assert_eq!(c.phone, None);
        assert_eq!(c.area.as_deref(), Some("Cumbria"));
    }

    #[test]
    fn refusals_name_the_field() {
        let mut d = valid();
        d["email"] = json!("Sam <sam@example.org>");
        assert_eq!(
            code_and_detail(&contact(d)),
            ("invalid_payload", "data.email: not an email address".into())
        );
        let mut d = valid();
        d.as_object_mut().unwrap().remove("organisation");
        assert_eq!(
            code_and_detail(&contact(d)),
            ("invalid_payload", "data.organisation: is required".into())
        );
        let mut d = valid();
        d["region"] = json!("wales");
        assert!(code_and_detail(&contact(d))
            .1
            .starts_with("data.region: unknown region id"));
        let mut d = valid();
        d["name"] = json!("x".repeat(201));
        assert!(code_and_detail(&contact(d))
            .1
            .starts_with("data.name: too long"));
        let mut d = valid();
        d["topic"] = json!("gossip");
        assert!(code_and_detail(&contact(d))
            .1
            .starts_with("data.topic: is not one of training, "));
    }

    /// A refusal names the field and the rule, never the value: a person may have typed their
    /// name or their concern into the wrong field, and details are logged and kept.
    #[test]
    fn refusals_never_echo_the_value() {
        let marker = "MARKER-Jo-Bloggs-worried-about-a-pupil";
        let mut cases: Vec<Vec<u8>> = ["setting", "topic", "region", "email"]
            .into_iter()
            .map(|field| {
                let mut d = valid();
                d[field] = json!(marker);
                contact(d)
            })
            .collect();
        let mut d = valid();
        d["name"] = json!(format!("{marker}{}", "x".repeat(300)));
        cases.push(contact(d));
        cases.push(
            json!({"id": "3b0c8a52-8f43-4a8e-9d0e-5c1f2f6b7a01", "type": marker, "version": 1,
                   "occurred_at": "2024-10-01T12:00:00Z", "data": valid()})
            .to_string()
            .into_bytes(),
        );
        cases.push(
            json!({"id": "3b0c8a52-8f43-4a8e-9d0e-5c1f2f6b7a01", "type": "contact.submitted",
                   "version": marker, "occurred_at": "2024-10-01T12:00:00Z", "data": valid()})
            .to_string()
            .into_bytes(),
        );
        for body in cases {
            let (code, detail) = code_and_detail(&body);
            assert_ne!(code, "", "refused");
            assert!(!detail.contains("MARKER"), "{code}: {detail}");
        }
    }

    fn session(data: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "id": "b14899dc-8144-558d-8b22-eb860f85ad15", "type": "session.scheduled", "version": 1,
            "occurred_at": "2024-09-02T09:00:00Z", "data": data
        }))
        .unwrap()
    }

    fn valid_session() -> Value {
        json!({
            "session_id": "dsl-2024-10-02", "title": "Prevent in education", "audience": "DSLs",
            "region": null, "starts_at": "2024-10-02T15:30:00+01:00", "ends_at": "2024-10-02T16:30:00+01:00",
            "registration_url": "https://www.eventbrite.co.uk/e/x", "joining_url": "http://localhost:9/j"
        })
    }

    #[test]
    fn parses_a_session_in_utc() {
        let env = Envelope::parse(&session(valid_session()), LIMIT).unwrap();
        let Event::SessionScheduled(s) = env.event else {
            panic!("a session")
        };
        assert_eq!(s.starts_at.to_rfc3339(), "2024-10-02T14:30:00+00:00");
        assert_eq!(s.region, None);
        assert_eq!(s.joining_url.as_deref(), Some("http://localhost:9/j"));
    }

    #[test]
    fn session_refusals_name_the_field() {
        let cases = [
            (
                "session_id",
                json!("has space"),
                "data.session_id: must be 1 to 64",
            ),
            (
                "session_id",
                json!("x".repeat(65)),
                "data.session_id: must be 1 to 64",
            ),
            (
                "ends_at",
                json!("2024-10-02T15:00:00+01:00"),
                "data.ends_at: must be after data.starts_at",
            ),
            (
                "ends_at",
                json!("2024-10-03T15:30:00+01:00"),
                "data.ends_at: a session lasts at most 12 hours",
            ),
            (
                "starts_at",
                json!("2024-10-02 15:30"),
                "data.starts_at: not an RFC 3339 time",
            ),
            (
                "registration_url",
                json!("http://example.org/r"),
                "data.registration_url: must be https",
            ),
            (
                "registration_url",
                json!(null),
                "data.registration_url: is required",
            ),
            (
                "joining_url",
                json!(format!("https://e.org/{}", "x".repeat(2000))),
                "data.joining_url: too long",
            ),
            (
                "region",
                json!("scotland"),
                "data.region: unknown region id",
            ),
        ];
        for (field, value, expected) in cases {
            let mut d = valid_session();
            d[field] = value;
            let (code, detail) = code_and_detail(&session(d));
            assert_eq!(code, "invalid_payload");
            assert!(detail.starts_with(expected), "{field}: {detail}");
        }
    }

    #[test]
    fn envelope_errors_have_their_codes() {
        assert_eq!(code_and_detail(b"{not json").0, "malformed_json");
        assert_eq!(code_and_detail(b"[1,2]").0, "malformed_json");
        let body = String::from_utf8(contact(valid())).unwrap();
        let unknown = body.replace("contact.submitted", "contact.deleted");
        assert_eq!(code_and_detail(unknown.as_bytes()).0, "unknown_type");
        let v2 = body.replace("\"version\":1", "\"version\":2");
        assert_eq!(code_and_detail(v2.as_bytes()).0, "unsupported_version");
        let bad_id = body.replace("3b0c8a52-8f43-4a8e-9d0e-5c1f2f6b7a01", "not-a-uuid");
        assert_eq!(
            code_and_detail(bad_id.as_bytes()),
            ("invalid_payload", "id: not a UUID".into())
        );
        let big = vec![b' '; LIMIT + 1];
        assert_eq!(code_and_detail(&big).0, "too_large");
    }

    #[test]
    fn settings_and_topics_read_as_the_page_names_them() {
        assert_eq!(Setting::School.as_str(), "school");
        assert_eq!(Setting::HigherEducation.label(), "Higher education");
        assert_eq!(Setting::Other.as_str(), "other");
        assert_eq!(Topic::ComplexCase.as_str(), "complex-case");
        assert_eq!(Topic::Other.label(), "Something else");
        assert!(Topic::ComplexCase.is_urgent());
        assert!(!Topic::Training.is_urgent());
        assert!(Topic::ALL.iter().filter(|t| t.1.is_urgent()).count() == 1);
        for (name, setting, label) in Setting::ALL {
            assert_eq!((setting.as_str(), setting.label()), (name, label));
        }
        for (name, topic, label) in Topic::ALL {
            assert_eq!((topic.as_str(), topic.label()), (name, label));
        }
    }

    /// Limits at their edges: exactly the limit is accepted, one more is refused.
    #[test]
    fn limits_hold_at_their_edges() {
        let mut d = valid();
        d["name"] = json!("é".repeat(MAX_NAME));
        assert!(Envelope::parse(&contact(d), LIMIT).is_ok());
        let mut d = valid();
        d["message"] = json!("é".repeat(MAX_BODY));
        assert!(Envelope::parse(&contact(d), LIMIT).is_ok());
        let mut d = valid();
        d["message"] = json!("é".repeat(MAX_BODY + 1));
        assert!(code_and_detail(&contact(d))
            .1
            .starts_with("data.message: too long"));
        let body = contact(valid());
        assert!(
            Envelope::parse(&body, body.len()).is_ok(),
            "a body of exactly the limit"
        );
        assert_eq!(code_and_detail_at(&body, body.len() - 1).0, "too_large");
        let mut s = valid_session();
        s["starts_at"] = json!("2024-10-02T11:30:00+01:00");
        s["ends_at"] = json!("2024-10-02T23:30:00+01:00");
        assert!(
            Envelope::parse(&session(s.clone()), LIMIT).is_ok(),
            "12 hours exactly"
        );
        s["ends_at"] = json!("2024-10-02T23:30:01+01:00");
        assert!(code_and_detail(&session(s)).1.starts_with("data.ends_at"));
    }

    #[test]
    fn a_description_is_kept_and_who_an_event_is_about_is_named() {
        let mut s = valid_session();
        s["description"] = json!("  Line one\r\nLine two  ");
        let e = Envelope::parse(&session(s), LIMIT).unwrap();
        match &e.event {
            Event::SessionScheduled(d) => {
                assert_eq!(d.description.as_deref(), Some("Line one\nLine two"))
            }
            other => panic!("{other:?}"),
        }
        assert!(e.event.personal_address().is_none());
        let c = Envelope::parse(&contact(valid()), LIMIT).unwrap();
        assert_eq!(
            c.event.personal_address().map(EmailAddress::as_str),
            Some("sam@example.org")
        );
    }

    #[test]
    fn a_refusal_reads_as_its_code_and_detail() {
        let e = Envelope::parse(b"{", LIMIT).unwrap_err();
        assert!(
            e.to_string().starts_with("malformed_json: not valid JSON"),
            "{e}"
        );
        let mut v: Value = serde_json::from_slice(&contact(valid())).unwrap();
        v["version"] = json!(1234567890123u64);
        let (code, detail) = code_and_detail(&serde_json::to_vec(&v).unwrap());
        assert_eq!(code, "unsupported_version");
        assert_eq!(
            detail,
            "version: not a supported number is not supported (expected 1)"
        );
        v["version"] = json!(123456789012u64);
        let (_, detail) = code_and_detail(&serde_json::to_vec(&v).unwrap());
        assert_eq!(
            detail,
            "version: 123456789012 is not supported (expected 1)"
        );
    }
}
