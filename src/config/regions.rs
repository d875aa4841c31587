//! `regions.toml`: the eight regions, their areas and coordinators, the national and triage
//! mailboxes, and the reminder, briefing and digest timings.

use super::working_time::WorkingTime;
use super::Problem;
use crate::domain::{EmailAddress, RegionId, Topic};
use chrono::{Duration, NaiveDate, NaiveTime};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::str::FromStr;

/// A time before a session: calendar days in UK time (same wall-clock time) or an exact duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offset {
    Days(u32),
    Exact(Duration),
}

impl FromStr for Offset {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let err =
            || format!("{s:?} is not an offset (a number followed by d, h or m, e.g. \"7d\")");
        let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?);
        let n: u32 = num.parse().map_err(|_| err())?;
        if n == 0 {
            return Err(format!("{s:?}: an offset must be greater than zero"));
        }
        match unit {
            "d" => Ok(Offset::Days(n)),
            "h" => Ok(Offset::Exact(Duration::hours(n.into()))),
            "m" => Ok(Offset::Exact(Duration::minutes(n.into()))),
            _ => Err(err()),
        }
    }
}

impl std::fmt::Display for Offset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Offset::Days(n) => write!(f, "{n}d"),
            Offset::Exact(d) if d.num_minutes() % 60 == 0 => write!(f, "{}h", d.num_hours()),
            Offset::Exact(d) => write!(f, "{}m", d.num_minutes()),
        }
    }
}

/// The settings for one region, or for national sessions.
#[derive(Debug, Clone)]
pub struct RegionConfig {
    pub name: String,
    pub coordinators: Vec<EmailAddress>,
    pub reminder_offsets: Vec<Offset>,
    pub briefing_offset: Offset,
    /// The digest's cron expression as written, and parsed (None for `[national]`).
    pub digest_schedule: Option<(String, cron::Schedule)>,
    /// How long its enquiries may stay unclaimed (`[national]`: the defaults, unused).
    pub claims: ClaimRules,
}

/// How long an enquiry may stay unclaimed before it is escalated, in working time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRules {
    /// Per topic id; topics not listed take `other`.
    pub per_topic: BTreeMap<String, Offset>,
    /// Every other topic (`"*"`).
    pub other: Offset,
    /// After the first deadline, how much more working time passes before the national
    /// coordinators get a second notice.
    pub second_notice: Offset,
}

impl Default for ClaimRules {
    /// The defaults: complex cases 2 working hours, everything else 3 working days, a
    /// second notice one working day later.
    fn default() -> Self {
        ClaimRules {
            per_topic: BTreeMap::from([(
                Topic::ComplexCase.as_str().to_owned(),
                Offset::Exact(Duration::hours(2)),
            )]),
            other: Offset::Days(3),
            second_notice: Offset::Days(1),
        }
    }
}

impl ClaimRules {
    /// The first deadline for an enquiry on `topic`.
    pub fn deadline(&self, topic: Topic) -> Offset {
        self.per_topic
            .get(topic.as_str())
            .copied()
            .unwrap_or(self.other)
    }
}

/// Where an enquiry goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// The enquiry named its region.
    Region(RegionId),
    /// The enquiry's area is listed for (or an alias of an area of) a region.
    Area(RegionId),
    /// Neither: the triage mailbox sends it on.
    Triage,
}

impl Routing {
    pub fn region(self) -> Option<RegionId> {
        match self {
            Routing::Region(r) | Routing::Area(r) => Some(r),
            Routing::Triage => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Routing::Region(_) => "region",
            Routing::Area(_) => "area",
            Routing::Triage => "triage",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Regions {
    pub triage: Vec<EmailAddress>,
    /// When working time passes (claim deadlines are counted in it).
    pub working_time: WorkingTime,
    /// The claim deadlines of enquiries that no region takes (triage).
    pub default_claims: ClaimRules,
    pub national: RegionConfig,
    regions: BTreeMap<RegionId, RegionConfig>,
    /// Normalised area or alias -> region.
    areas: HashMap<String, RegionId>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    working_time: RawWorkingTime,
    defaults: RawDefaults,
    national: RawRegion,
    regions: BTreeMap<String, RawRegion>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    reminder_offsets: Vec<String>,
    briefing_offset: String,
    digest_schedule: String,
    triage: Vec<String>,
    /// Added with claiming: absent means the built-in defaults.
    claim_deadlines: Option<BTreeMap<String, String>>,
    second_notice: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkingTime {
    opens: String,
    closes: String,
    /// A file in the same directory.
    bank_holidays: String,
}

impl Default for RawWorkingTime {
    fn default() -> Self {
        RawWorkingTime {
            opens: "08:00".into(),
            closes: "18:00".into(),
            bank_holidays: BANK_HOLIDAYS_FILE.into(),
        }
    }
}

/// The bank holiday file's name, unless `[working_time] bank_holidays` names another.
pub const BANK_HOLIDAYS_FILE: &str = "bank-holidays.toml";

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawBankHolidays {
    england_and_wales: Vec<String>,
}

/// Reads a bank holiday file (`england-and-wales = ["2024-01-01", ...]`).
pub fn parse_bank_holidays(text: &str, file: &str) -> Result<BTreeSet<NaiveDate>, Vec<Problem>> {
    let raw: RawBankHolidays = toml::from_str(text)
        .map_err(|e| vec![Problem::new(file, e.to_string().trim().replace('\n', " "))])?;
    let mut problems = Vec::new();
    let mut days = BTreeSet::new();
    for d in &raw.england_and_wales {
        match NaiveDate::parse_from_str(d.trim(), "%Y-%m-%d") {
            Ok(day) => {
                days.insert(day);
            }
            Err(_) => problems.push(Problem::new(
                format!("{file}: england-and-wales"),
                format!("{d:?} is not a date (YYYY-MM-DD)"),
            )),
        }
    }
    if days.is_empty() && problems.is_empty() {
        problems.push(Problem::new(
            format!("{file}: england-and-wales"),
            "lists no bank holidays",
        ));
    }
    if problems.is_empty() {
        Ok(days)
    } else {
        Err(problems)
    }
}

fn parse_clock(s: &str, place: &str, problems: &mut Vec<Problem>) -> Option<NaiveTime> {
    NaiveTime::parse_from_str(s.trim(), "%H:%M")
        .map_err(|_| {
            problems.push(Problem::new(
                place,
                format!("{s:?} is not a time of day (HH:MM, e.g. \"08:00\")"),
            ))
        })
        .ok()
}

/// Reads a table of claim deadlines laid over `base`, key by key ("*" for other topics).
fn parse_claims(
    base: &ClaimRules,
    deadlines: Option<&BTreeMap<String, String>>,
    second_notice: Option<&String>,
    place: &str,
    problems: &mut Vec<Problem>,
) -> ClaimRules {
    let mut rules = base.clone();
    for (topic, value) in deadlines.into_iter().flatten() {
        let at = format!("{place}.claim_deadlines.{topic}");
        let offset = match value.parse::<Offset>() {
            Ok(o) => o,
            Err(e) => {
                problems.push(Problem::new(at, e));
                continue;
            }
        };
        if topic == "*" {
            rules.other = offset;
        } else if Topic::parse(topic).is_some() {
            rules.per_topic.insert(topic.clone(), offset);
        } else {
            let topics: Vec<&str> = Topic::ids().collect();
            problems.push(Problem::new(
                at,
                format!("not a topic: one of {} or \"*\"", topics.join(", ")),
            ));
        }
    }
    if let Some(s) = second_notice {
        match s.parse() {
            Ok(o) => rules.second_notice = o,
            Err(e) => problems.push(Problem::new(format!("{place}.second_notice"), e)),
        }
    }
    rules
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegion {
    name: String,
    coordinators: Vec<String>,
    #[serde(default)]
    areas: Vec<String>,
    #[serde(default)]
    aliases: BTreeMap<String, Vec<String>>,
    reminder_offsets: Option<Vec<String>>,
    briefing_offset: Option<String>,
    digest_schedule: Option<String>,
    claim_deadlines: Option<BTreeMap<String, String>>,
    second_notice: Option<String>,
}

/// The form in which areas are compared: lower case, "&" read as "and", punctuation and extra
/// spaces dropped, and a trailing "police", "constabulary" or "council" (as people often write
/// the force or authority's full name) removed.
pub fn normalise_area(s: &str) -> String {
    let lowered = s.to_lowercase().replace('&', " and ");
    let words: Vec<&str> = lowered
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let mut words = words.as_slice();
    if words.len() > 1 && words[0] == "the" {
        words = &words[1..];
    }
    const SUFFIXES: [&[&str]; 8] = [
        &["police", "force", "area"],
        &["police", "area"],
        &["police"],
        &["constabulary"],
        &["county", "council"],
        &["city", "council"],
        &["borough", "council"],
        &["council"],
    ];
    for suffix in SUFFIXES {
        if words.len() > suffix.len() && words.ends_with(suffix) {
            words = &words[..words.len() - suffix.len()];
            break;
        }
    }
    words.join(" ")
}

fn parse_offsets(raw: &[String], place: &str, problems: &mut Vec<Problem>) -> Vec<Offset> {
    raw.iter()
        .filter_map(|o| {
            o.parse()
                .map_err(|e| problems.push(Problem::new(place, e)))
                .ok()
        })
        .collect()
}

fn parse_addresses(raw: &[String], place: &str, problems: &mut Vec<Problem>) -> Vec<EmailAddress> {
    if raw.is_empty() {
        problems.push(Problem::new(place, "needs at least one address"));
    }
    raw.iter()
        .filter_map(|a| {
            EmailAddress::parse(a)
                .map_err(|e| problems.push(Problem::new(place, format!("{a:?}: {e}"))))
                .ok()
        })
        .collect()
}

/// Parses a digest schedule: cron with seconds (6 or 7 fields).
pub fn parse_schedule(expr: &str) -> Result<cron::Schedule, String> {
    let fields = expr.split_whitespace().count();
    if !(6..=7).contains(&fields) {
        return Err(format!(
            "{expr:?} is not a cron expression with seconds (6 or 7 fields, e.g. \"0 0 9 * * Mon\"; it has {fields})"
        ));
    }
    cron::Schedule::from_str(expr)
        .map_err(|e| format!("{expr:?} is not a valid cron expression: {e}"))
}

impl Regions {
    /// Reads `regions.toml` and the bank holiday file beside it.
    pub fn load(path: &Path) -> Result<Regions, Vec<Problem>> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| vec![Problem::new(&file, format!("cannot be read: {e}"))])?;
        let parsed = Self::parse(&text, &file);
        let holidays_name = toml::from_str::<RawFile>(&text)
            .map(|raw| raw.working_time.bank_holidays)
            .unwrap_or_else(|_| BANK_HOLIDAYS_FILE.into());
        let holidays_path = path
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join(&holidays_name);
        let holidays_file = holidays_path.display().to_string();
        let holidays = std::fs::read_to_string(&holidays_path)
            .map_err(|e| vec![Problem::new(&holidays_file, format!("cannot be read: {e}"))])
            .and_then(|t| parse_bank_holidays(&t, &holidays_file));
        match (parsed, holidays) {
            (Ok(mut regions), Ok(days)) => {
                regions.working_time = WorkingTime::new(
                    regions.working_time.opens,
                    regions.working_time.closes,
                    days,
                );
                Ok(regions)
            }
            (Ok(_), Err(p)) => Err(p),
            (Err(mut p), Err(q)) => {
                p.extend(q);
                Err(p)
            }
            (Err(p), Ok(_)) => Err(p),
        }
    }

    /// Parses `regions.toml` alone: working time then has no bank holidays (`load` reads them).
    pub fn parse(text: &str, file: &str) -> Result<Regions, Vec<Problem>> {
        let raw: RawFile = toml::from_str(text)
            .map_err(|e| vec![Problem::new(file, e.to_string().trim().replace('\n', " "))])?;
        let mut problems = Vec::new();
        let at = |key: &str| format!("{file}: {key}");

        let default_offsets = parse_offsets(
            &raw.defaults.reminder_offsets,
            &at("defaults.reminder_offsets"),
            &mut problems,
        );
        let default_briefing = raw
            .defaults
            .briefing_offset
            .parse()
            .map_err(|e| problems.push(Problem::new(at("defaults.briefing_offset"), e)))
            .unwrap_or(Offset::Days(1));
        if let Err(e) = parse_schedule(&raw.defaults.digest_schedule) {
            problems.push(Problem::new(at("defaults.digest_schedule"), e));
        }
        let triage = parse_addresses(&raw.defaults.triage, &at("defaults.triage"), &mut problems);
        let opens = parse_clock(
            &raw.working_time.opens,
            &at("working_time.opens"),
            &mut problems,
        );
        let closes = parse_clock(
            &raw.working_time.closes,
            &at("working_time.closes"),
            &mut problems,
        );
        let working_time = match (opens, closes) {
            (Some(o), Some(c)) if o < c => WorkingTime::new(o, c, BTreeSet::new()),
            (Some(_), Some(_)) => {
                problems.push(Problem::new(
                    at("working_time.closes"),
                    "must be later than working_time.opens",
                ));
                WorkingTime::standard(BTreeSet::new())
            }
            _ => WorkingTime::standard(BTreeSet::new()),
        };
        let default_claims = parse_claims(
            &ClaimRules::default(),
            raw.defaults.claim_deadlines.as_ref(),
            raw.defaults.second_notice.as_ref(),
            &at("defaults"),
            &mut problems,
        );

        let build = |key: &str, r: &RawRegion, with_digest: bool, problems: &mut Vec<Problem>| {
            let reminder_offsets = match &r.reminder_offsets {
                Some(o) => parse_offsets(o, &at(&format!("{key}.reminder_offsets")), problems),
                None => default_offsets.clone(),
            };
            let briefing_offset = match &r.briefing_offset {
                Some(o) => o
                    .parse()
                    .map_err(|e| {
                        problems.push(Problem::new(at(&format!("{key}.briefing_offset")), e))
                    })
                    .unwrap_or(default_briefing),
                None => default_briefing,
            };
            let digest_schedule = if with_digest {
                let expr = r
                    .digest_schedule
                    .as_ref()
                    .unwrap_or(&raw.defaults.digest_schedule);
                match parse_schedule(expr) {
                    Ok(s) => Some((expr.clone(), s)),
                    Err(e) => {
                        if r.digest_schedule.is_some() {
                            problems.push(Problem::new(at(&format!("{key}.digest_schedule")), e));
                        }
                        None
                    }
                }
            } else {
                if r.digest_schedule.is_some() {
                    problems.push(Problem::new(
                        at(&format!("{key}.digest_schedule")),
                        "national sessions are listed in every region's digest; [national] has no digest of its own",
                    ));
                }
                None
            };
            if r.name.trim().is_empty() {
                problems.push(Problem::new(
                    at(&format!("{key}.name")),
                    "must not be empty",
                ));
            }
            if !with_digest && (r.claim_deadlines.is_some() || r.second_notice.is_some()) {
                problems.push(Problem::new(
                    at(&format!("{key}.claim_deadlines")),
                    "enquiries go to regions (or triage, under [defaults]); [national] has no deadlines of its own",
                ));
            }
            let claims = parse_claims(
                &default_claims,
                r.claim_deadlines.as_ref(),
                r.second_notice.as_ref(),
                &at(key),
                problems,
            );
            RegionConfig {
                name: r.name.trim().to_owned(),
                coordinators: parse_addresses(
                    &r.coordinators,
                    &at(&format!("{key}.coordinators")),
                    problems,
                ),
                reminder_offsets,
                briefing_offset,
                digest_schedule,
                claims,
            }
        };

        let national = build("national", &raw.national, false, &mut problems);
        if !raw.national.areas.is_empty() {
            problems.push(Problem::new(
                at("national.areas"),
                "national sessions have no areas",
            ));
        }
        let mut regions = BTreeMap::new();
        let mut areas: HashMap<String, (RegionId, String)> = HashMap::new();
        for (key, r) in &raw.regions {
            let place = format!("regions.{key}");
            let id: RegionId = match key.parse() {
                Ok(id) => id,
                Err(e) => {
                    problems.push(Problem::new(at(&place), e));
                    continue;
                }
            };
            regions.insert(id, build(&place, r, true, &mut problems));
            let mut add = |name: &str, what: &str, problems: &mut Vec<Problem>| {
                let norm = normalise_area(name);
                if norm.is_empty() {
                    problems.push(Problem::new(
                        at(&format!("{place}.{what}")),
                        "an empty area name",
                    ));
                    return;
                }
                if let Some((other, first)) = areas.get(&norm) {
                    if *other != id || first != name {
                        problems.push(Problem::new(
                            at(&format!("{place}.{what}")),
                            format!("{name:?} is also listed as {first:?} in regions.{other}"),
                        ));
                    }
                    return;
                }
                areas.insert(norm, (id, name.to_owned()));
            };
            for area in &r.areas {
                add(area, "areas", &mut problems);
            }
            for (area, aliases) in &r.aliases {
                if !r
                    .areas
                    .iter()
                    .any(|a| normalise_area(a) == normalise_area(area))
                {
                    problems.push(Problem::new(
                        at(&format!("{place}.aliases")),
                        format!("{area:?} is not one of this region's areas"),
                    ));
                }
                for alias in aliases {
                    add(alias, "aliases", &mut problems);
                }
            }
        }
        for id in RegionId::ALL {
            if !regions.contains_key(&id) {
                problems.push(Problem::new(
                    at(&format!("regions.{id}")),
                    "missing: every region needs its coordinators",
                ));
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Regions {
            triage,
            working_time,
            default_claims,
            national,
            regions,
            areas: areas.into_iter().map(|(k, (id, _))| (k, id)).collect(),
        })
    }

    pub fn region(&self, id: RegionId) -> &RegionConfig {
        // Parsing refuses a file that lacks any of the eight regions.
        &self.regions[&id]
    }

    pub fn iter(&self) -> impl Iterator<Item = (RegionId, &RegionConfig)> {
        self.regions.iter().map(|(id, r)| (*id, r))
    }

    /// Reminder and briefing settings for a session: its region's, or `[national]`'s.
    pub fn for_session(&self, region: Option<RegionId>) -> &RegionConfig {
        match region {
            Some(r) => self.region(r),
            None => &self.national,
        }
    }

    /// The region for a free-text area, if one lists it (or an alias of it).
    pub fn find_area(&self, area: &str) -> Option<RegionId> {
        self.areas.get(&normalise_area(area)).copied()
    }

    /// Region if given; otherwise the area's region; otherwise triage.
    pub fn route(&self, region: Option<RegionId>, area: Option<&str>) -> Routing {
        if let Some(r) = region {
            return Routing::Region(r);
        }
        match area.and_then(|a| self.find_area(a)) {
            Some(r) => Routing::Area(r),
            None => Routing::Triage,
        }
    }

    /// A warning when the bank holiday list ends within 90 days of `today` (or lists none):
    /// after its end every weekday counts as a working day.
    pub fn bank_holidays_warning(&self, today: NaiveDate) -> Option<String> {
        let horizon = today + Duration::days(90);
        match self.working_time.holidays_end() {
            Some(end) if end >= horizon => None,
            Some(end) => Some(format!(
                "the bank holiday list ({BANK_HOLIDAYS_FILE}) ends on {end}: add the next year's dates from https://www.gov.uk/bank-holidays, or claim deadlines will count bank holidays as working days"
            )),
            None => Some(format!("the bank holiday list ({BANK_HOLIDAYS_FILE}) is empty")),
        }
    }

    /// The claim deadlines for an enquiry routed to `region` (None: triage).
    pub fn claims(&self, region: Option<RegionId>) -> &ClaimRules {
        match region {
            Some(r) => &self.region(r).claims,
            None => &self.default_claims,
        }
    }

    /// Who reads enquiries with this routing.
    pub fn mailboxes(&self, routing: Routing) -> &[EmailAddress] {
        match routing.region() {
            Some(r) => &self.region(r).coordinators,
            None => &self.triage,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> Regions {
        Regions::load(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/regions.toml"
        )))
        .unwrap()
    }

    #[test]
    fn every_area_on_the_page_finds_its_region() {
        let r = shipped();
        let page = [
            ("north-west", "Greater Manchester, Cheshire, Cumbria, Isle of Man, Lancashire, Merseyside"),
            ("north-east", "West Yorkshire, Cleveland, Durham, Humberside, Northumbria, North Yorkshire, South Yorkshire"),
            ("west-midlands", "West Midlands, Staffordshire, Warwickshire, West Mercia"),
            ("east-midlands", "Derbyshire, Leicestershire, Lincolnshire, Northamptonshire, Nottinghamshire"),
            ("south-east", "Thames Valley, Hampshire, Kent, Surrey, Sussex"),
            ("south-west", "Avon & Somerset, Devon & Cornwall, Dorset, Gloucestershire, Wiltshire"),
            ("east-of-england", "Bedfordshire, Essex, Hertfordshire, Norfolk, Cambridgeshire, Suffolk"),
            ("london", "London"),
        ];
        for (region, areas) in page {
            for area in areas.split(", ") {
                assert_eq!(
                    r.find_area(area).map(RegionId::as_str),
                    Some(region),
                    "{area}"
                );
            }
        }
    }

    #[test]
    fn matching_forgives_case_spacing_punctuation_and_ampersands() {
        let r = shipped();
        for spelling in [
            "avon and somerset",
            "AVON & SOMERSET",
            "  Avon   &Somerset ",
            "Avon-and-Somerset",
            "Avon and Somerset Police",
            "avon & somerset constabulary",
        ] {
            assert_eq!(
                r.find_area(spelling),
                Some(RegionId::SouthWest),
                "{spelling}"
            );
        }
        assert_eq!(r.find_area("Manchester"), Some(RegionId::NorthWest));
        assert_eq!(
            r.find_area("Kent County Council"),
            Some(RegionId::SouthEast)
        );
        assert_eq!(r.find_area("somewhere unlisted"), None);
        assert_eq!(r.find_area("Somerset House"), None);
    }

    #[test]
    fn routing_prefers_region_then_area_then_triage() {
        let r = shipped();
        assert_eq!(
            r.route(Some(RegionId::London), Some("Cumbria")),
            Routing::Region(RegionId::London)
        );
        assert_eq!(
            r.route(None, Some("Cumbria")),
            Routing::Area(RegionId::NorthWest)
        );
        assert_eq!(r.route(None, Some("Atlantis")), Routing::Triage);
        assert_eq!(r.route(None, None), Routing::Triage);
        assert_eq!(
            r.mailboxes(Routing::Triage)[0].as_str(),
            "prevent.triage@example.org"
        );
    }

    fn loaded() -> Regions {
        shipped()
    }

    #[test]
    fn claim_deadlines_default_to_two_working_hours_for_complex_cases_and_three_days_else() {
        let r = loaded();
        let rules = r.claims(Some(RegionId::London));
        assert_eq!(
            rules.deadline(Topic::ComplexCase),
            Offset::Exact(Duration::hours(2))
        );
        assert_eq!(rules.deadline(Topic::Training), Offset::Days(3));
        assert_eq!(rules.second_notice, Offset::Days(1));
        assert_eq!(
            r.claims(None).deadline(Topic::ComplexCase),
            Offset::Exact(Duration::hours(2))
        );
        assert_eq!(
            r.working_time.opens,
            NaiveTime::from_hms_opt(8, 0, 0).unwrap()
        );
        assert_eq!(
            r.working_time.closes,
            NaiveTime::from_hms_opt(18, 0, 0).unwrap()
        );
        let today = NaiveDate::from_ymd_opt(2027, 10, 1).unwrap();
        assert!(r
            .bank_holidays_warning(today)
            .is_some_and(|w| w.contains("2027-12-28")));
        assert_eq!(
            r.bank_holidays_warning(NaiveDate::from_ymd_opt(2027, 9, 29).unwrap()),
            None
        );
    }

    #[test]
    fn a_region_overrides_claim_deadlines_key_by_key() {
        let text = shipped_text().replacen(
            "[regions.london]\n",
            "[regions.london]\nclaim_deadlines = { \"*\" = \"1d\", \"training\" = \"30m\" }\nsecond_notice = \"4h\"\n",
            1,
        );
        let r = Regions::parse(&text, "regions.toml").unwrap();
        let london = r.claims(Some(RegionId::London));
        assert_eq!(
            london.deadline(Topic::Training),
            Offset::Exact(Duration::minutes(30))
        );
        assert_eq!(london.deadline(Topic::LocalRisk), Offset::Days(1));
        // Not named in London's table: the defaults' value.
        assert_eq!(
            london.deadline(Topic::ComplexCase),
            Offset::Exact(Duration::hours(2))
        );
        assert_eq!(london.second_notice, Offset::Exact(Duration::hours(4)));
        assert_eq!(
            r.claims(Some(RegionId::NorthWest))
                .deadline(Topic::Training),
            Offset::Days(3)
        );
    }

    #[test]
    fn bad_working_time_and_deadlines_are_reported_with_their_place() {
        let text = shipped_text()
            .replacen("opens = \"08:00\"", "opens = \"8am\"", 1)
            .replacen(
                "\"complex-case\" = \"2h\"",
                "\"complex-cases\" = \"2h\", \"training\" = \"soon\"",
                1,
            );
        let all = Regions::parse(&text, "regions.toml")
            .unwrap_err()
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            all.contains("working_time.opens: \"8am\" is not a time of day"),
            "{all}"
        );
        assert!(
            all.contains("defaults.claim_deadlines.complex-cases: not a topic"),
            "{all}"
        );
        assert!(
            all.contains("defaults.claim_deadlines.training: \"soon\" is not an offset"),
            "{all}"
        );
        let late = shipped_text().replacen("closes = \"18:00\"", "closes = \"07:00\"", 1);
        assert!(Regions::parse(&late, "regions.toml").is_err());
        let holidays =
            parse_bank_holidays("england-and-wales = [\"2024-02-30\"]", "b.toml").unwrap_err();
        assert!(
            holidays[0]
                .to_string()
                .contains("\"2024-02-30\" is not a date"),
            "{holidays:?}"
        );
    }

    #[test]
    fn offsets_parse() {
        assert_eq!("7d".parse(), Ok(Offset::Days(7)));
        assert_eq!("1h".parse(), Ok(Offset::Exact(Duration::hours(1))));
        assert_eq!("30m".parse(), Ok(Offset::Exact(Duration::minutes(30))));
        assert!("7".parse::<Offset>().is_err());
        assert!("0d".parse::<Offset>().is_err());
        assert!("1w".parse::<Offset>().is_err());
        for label in ["7d", "1h", "90m", "24h"] {
            assert_eq!(label.parse::<Offset>().unwrap().to_string(), label);
        }
    }

    #[test]
    fn a_broken_file_reports_every_problem_with_its_place() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/regions.toml"))
                .unwrap();
        let broken = text
            .replace("[regions.london]", "[regions.londres]")
            .replace("[regions.london.aliases]", "[regions.londres.aliases]")
            .replace("\"Suffolk\"]", "\"Suffolk\", \"Kent\"]")
            .replace("rpec.north-east@example.org", "not an address")
            .replace(
                "digest_schedule = \"0 0 9 * * Mon\"",
                "digest_schedule = \"every monday\"",
            );
        let problems = Regions::parse(&broken, "regions.toml").unwrap_err();
        let all = problems
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            all.contains("regions.toml: regions.londres: unknown region id"),
            "{all}"
        );
        assert!(
            all.contains("regions.toml: regions.london: missing"),
            "{all}"
        );
        let kent = all
            .lines()
            .find(|l| l.contains("\"Kent\" is also listed"))
            .expect("the duplicate area");
        assert!(
            kent.contains("south-east") && kent.contains("east-of-england"),
            "{kent}"
        );
        assert!(
            all.contains("regions.north-east.coordinators: \"not an address\""),
            "{all}"
        );
        assert!(
            all.contains("defaults.digest_schedule: \"every monday\""),
            "{all}"
        );
    }

    fn shipped_text() -> String {
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/regions.toml"))
            .unwrap()
    }

    #[test]
    fn a_routing_names_its_region_and_how_it_was_found() {
        let r = RegionId::London;
        assert_eq!(Routing::Region(r).region(), Some(r));
        assert_eq!(Routing::Area(r).region(), Some(r));
        assert_eq!(Routing::Triage.region(), None);
        assert_eq!(Routing::Region(r).as_str(), "region");
        assert_eq!(Routing::Area(r).as_str(), "area");
        assert_eq!(Routing::Triage.as_str(), "triage");
    }

    /// A one-word name is never cut down to nothing: "The" and "Police" on their own stay.
    #[test]
    fn normalising_keeps_a_name_that_is_only_a_prefix_or_a_suffix() {
        assert_eq!(normalise_area("The"), "the");
        assert_eq!(normalise_area("The Wirral"), "wirral");
        assert_eq!(normalise_area("Police"), "police");
        assert_eq!(normalise_area("Council"), "council");
        assert_eq!(normalise_area("County Council"), "county");
        assert_eq!(normalise_area("Cumbria Constabulary"), "cumbria");
        assert_eq!(normalise_area("Kent Police Force Area"), "kent");
    }

    #[test]
    fn the_shipped_offsets_and_every_region_are_read() {
        let regions = Regions::parse(&shipped_text(), "regions.toml").unwrap();
        assert_eq!(regions.iter().count(), 8);
        let national = regions.for_session(None);
        assert_eq!(
            national.reminder_offsets,
            ["7d", "1d", "1h"].map(|o| o.parse::<Offset>().unwrap())
        );
        for (_, region) in regions.iter() {
            assert_eq!(region.reminder_offsets.len(), 3, "{}", region.name);
        }
    }

    /// The same area twice in one region, spelt the same, is a harmless repeat; spelt two ways
    /// it is reported (one of them is a mistake).
    #[test]
    fn an_area_repeated_in_its_region_is_reported_only_when_spelt_differently() {
        let text = shipped_text();
        let same = text.replacen("\"Cumbria\"", "\"Cumbria\", \"Cumbria\"", 1);
        assert!(Regions::parse(&same, "regions.toml").is_ok());
        let differently = text.replacen("\"Cumbria\"", "\"Cumbria\", \"CUMBRIA\"", 1);
        let problems = Regions::parse(&differently, "regions.toml").unwrap_err();
        assert!(
            problems.iter().any(|p| p
                .to_string()
                .contains("\"CUMBRIA\" is also listed as \"Cumbria\"")),
            "{problems:?}"
        );
    }
}
