//! Working time: Monday to Friday, from the configured opening to the closing time in UK time
//! (Europe/London), except the England and Wales bank holidays listed in
//! `config/bank-holidays.toml`. The deadlines for claiming an enquiry are counted in it, so that
//! "2 working hours" asked for at 4:30pm on a Friday falls on Monday morning, not on Saturday.
//!
//! Opening and closing times are wall-clock times: on the Monday after a clock change the
//! working day still opens at 08:00 UK time, whatever that is in UTC. Working days past the end
//! of the holiday list are counted as ordinary weekdays (`check` warns before the list ends).

use crate::config::Offset;
use crate::uk_time::london_instant;
use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveTime, Utc, Weekday};
use chrono_tz::Europe::London;
use std::collections::BTreeSet;

/// The longest stretch of calendar days looked through for working time: far more than any
/// deadline needs, and a bound on the work if the configuration were absurd.
const MAX_DAYS: u32 = 3_660;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkingTime {
    /// When a working day starts, UK wall-clock time.
    pub opens: NaiveTime,
    /// When it ends (after `opens`).
    pub closes: NaiveTime,
    /// Bank holidays: days on which no working time passes.
    holidays: BTreeSet<NaiveDate>,
}

impl WorkingTime {
    pub fn new(opens: NaiveTime, closes: NaiveTime, holidays: BTreeSet<NaiveDate>) -> Self {
        WorkingTime {
            opens,
            closes,
            holidays,
        }
    }

    /// 08:00 to 18:00, with these holidays.
    pub fn standard(holidays: BTreeSet<NaiveDate>) -> Self {
        let at = |h| NaiveTime::from_hms_opt(h, 0, 0).unwrap_or_default();
        WorkingTime::new(at(8), at(18), holidays)
    }

    /// The length of one working day: what "1d" of working time means.
    pub fn day_length(&self) -> Duration {
        self.closes - self.opens
    }

    /// The last bank holiday listed, if any.
    pub fn holidays_end(&self) -> Option<NaiveDate> {
        self.holidays.last().copied()
    }

    /// Whether working time passes on this (UK) date.
    pub fn is_working_day(&self, date: NaiveDate) -> bool {
        !matches!(date.weekday(), Weekday::Sat | Weekday::Sun) && !self.holidays.contains(&date)
    }

    /// The working hours of a date, as instants; None on a weekend or bank holiday.
    fn window(&self, date: NaiveDate) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        self.is_working_day(date).then(|| {
            (
                london_instant(date.and_time(self.opens)),
                london_instant(date.and_time(self.closes)),
            )
        })
    }

    /// How much working time an offset is: hours and minutes as they are, days as that many
    /// working days' length.
    pub fn length_of(&self, offset: Offset) -> Duration {
        match offset {
            Offset::Exact(d) => d,
            Offset::Days(n) => self.day_length() * n as i32,
        }
    }

    /// The instant at which `amount` of working time has passed since `start`. Time outside
    /// working hours does not count, so the result is always within working hours (or at a
    /// closing time).
    pub fn add(&self, start: DateTime<Utc>, amount: Duration) -> DateTime<Utc> {
        if amount <= Duration::zero() {
            return start;
        }
        let mut remaining = amount;
        let mut date = start.with_timezone(&London).date_naive();
        for _ in 0..MAX_DAYS {
            if let Some((open, close)) = self.window(date) {
                let from = start.max(open);
                if from < close {
                    let available = close - from;
                    if remaining <= available {
                        return from + remaining;
                    }
                    remaining -= available;
                }
            }
            match date.succ_opt() {
                Some(next) => date = next,
                None => break,
            }
        }
        start + remaining
    }

    /// `add` for an offset.
    pub fn add_offset(&self, start: DateTime<Utc>, offset: Offset) -> DateTime<Utc> {
        self.add(start, self.length_of(offset))
    }

    /// The working time that passed between `from` and `to` (zero if `to` is not later).
    pub fn between(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Duration {
        if to <= from {
            return Duration::zero();
        }
        let mut total = Duration::zero();
        let mut date = from.with_timezone(&London).date_naive();
        let last = to.with_timezone(&London).date_naive();
        for _ in 0..MAX_DAYS {
            if date > last {
                break;
            }
            if let Some((open, close)) = self.window(date) {
                let (a, b) = (from.max(open), to.min(close));
                if a < b {
                    total += b - a;
                }
            }
            match date.succ_opt() {
                Some(next) => date = next,
                None => break,
            }
        }
        total
    }
}

/// Working time as people read it: "45 minutes", "2 working hours", "1 working hour 30
/// minutes", "3 working days" (a day being `day_length`).
pub fn describe(amount: Duration, day_length: Duration) -> String {
    let minutes = amount.num_minutes().max(0);
    let day = day_length.num_minutes().max(1);
    let plural = |n: i64, one: &str, many: &str| {
        if n == 1 {
            format!("1 {one}")
        } else {
            format!("{n} {many}")
        }
    };
    if minutes >= day && minutes % day == 0 {
        return plural(minutes / day, "working day", "working days");
    }
    let (hours, mins) = (minutes / 60, minutes % 60);
    match (hours, mins) {
        (0, m) => plural(m, "minute", "minutes"),
        (h, 0) => plural(h, "working hour", "working hours"),
        (h, m) => format!(
            "{} {}",
            plural(h, "working hour", "working hours"),
            plural(m, "minute", "minutes")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn date(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    fn hours(h: i64) -> Duration {
        Duration::hours(h)
    }

    fn shipped() -> WorkingTime {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/bank-holidays.toml"
        ))
        .unwrap();
        WorkingTime::standard(
            crate::config::parse_bank_holidays(&text, "bank-holidays.toml").unwrap(),
        )
    }

    fn nine_to_six() -> WorkingTime {
        let mut w = shipped();
        w.opens = NaiveTime::from_hms_opt(9, 0, 0).unwrap();
        w
    }

    #[test]
    fn time_within_a_working_day_passes_as_it_is() {
        let w = shipped();
        // Wednesday 2 October 2024, 10:00 BST.
        assert_eq!(
            w.add(utc("2024-10-02T10:00:00+01:00"), hours(2)),
            utc("2024-10-02T12:00:00+01:00")
        );
        // Exactly to the close.
        assert_eq!(
            w.add(utc("2024-10-02T16:00:00+01:00"), hours(2)),
            utc("2024-10-02T18:00:00+01:00")
        );
    }

    #[test]
    fn a_friday_afternoon_deadline_falls_on_monday_morning_not_on_saturday() {
        // 08:00 to 18:00: 1.5 hours on Friday, 0.5 on Monday.
        let w = shipped();
        assert_eq!(
            w.add(utc("2024-11-29T16:30:00Z"), hours(2)),
            utc("2024-12-02T08:30:00Z")
        );
        // 09:00 to 18:00: Monday 9:30am.
        assert_eq!(
            nine_to_six().add(utc("2024-11-29T16:30:00Z"), hours(2)),
            utc("2024-12-02T09:30:00Z")
        );
        // Submitted at the weekend: counted from Monday's opening.
        assert_eq!(
            w.add(utc("2024-11-30T11:00:00Z"), hours(2)),
            utc("2024-12-02T10:00:00Z")
        );
        // Before opening on a weekday: from the opening.
        assert_eq!(
            w.add(utc("2024-12-03T06:00:00Z"), hours(2)),
            utc("2024-12-03T10:00:00Z")
        );
    }

    #[test]
    fn bank_holidays_are_closed() {
        let w = shipped();
        // Friday 22 August 2025, 17:30 BST, before the summer bank holiday (Monday 25th):
        // half an hour on Friday, the rest on Tuesday.
        assert!(!w.is_working_day(date("2025-08-25")));
        assert_eq!(
            w.add(utc("2025-08-22T17:30:00+01:00"), hours(2)),
            utc("2025-08-26T09:30:00+01:00")
        );
        // Christmas 2026: Friday 25th and the substitute Monday 28th for Boxing Day.
        assert_eq!(
            w.add(utc("2026-12-24T17:00:00Z"), hours(2)),
            utc("2026-12-29T09:00:00Z")
        );
        // Easter 2025: Good Friday 18 April and Easter Monday 21 April.
        assert_eq!(
            w.add(utc("2025-04-17T17:00:00+01:00"), hours(2)),
            utc("2025-04-22T09:00:00+01:00")
        );
    }

    #[test]
    fn working_hours_keep_the_wall_clock_across_both_clock_changes() {
        let w = nine_to_six();
        // Spring: Friday 28 March 2025 16:30 GMT; the clocks go forward on Sunday 30th.
        // Monday 31 March opens at 09:00 BST (08:00 UTC): the deadline is 9:30am BST.
        let monday = w.add(utc("2025-03-28T16:30:00Z"), hours(2));
        assert_eq!(monday, utc("2025-03-31T09:30:00+01:00"));
        assert_eq!(
            crate::uk_time::date_time(monday),
            "Monday 31 March 2025, 9:30am"
        );
        // Autumn: Friday 24 October 2025 16:30 BST; the clocks go back on Sunday 26th.
        let monday = w.add(utc("2025-10-24T16:30:00+01:00"), hours(2));
        assert_eq!(monday, utc("2025-10-27T09:30:00Z"));
        assert_eq!(
            crate::uk_time::date_time(monday),
            "Monday 27 October 2025, 9:30am"
        );
        // The working time between counts the same two hours either way.
        assert_eq!(
            w.between(
                utc("2025-03-28T16:30:00Z"),
                utc("2025-03-31T09:30:00+01:00")
            ),
            hours(2)
        );
        assert_eq!(
            w.between(
                utc("2025-10-24T16:30:00+01:00"),
                utc("2025-10-27T09:30:00Z")
            ),
            hours(2)
        );
    }

    #[test]
    fn working_days_are_days_of_working_hours() {
        let w = shipped();
        // Tuesday 5 November 2024, 17:00: 3 working days (30 hours) is Friday 17:00.
        assert_eq!(
            w.add_offset(utc("2024-11-05T17:00:00Z"), Offset::Days(3)),
            utc("2024-11-08T17:00:00Z")
        );
        // Thursday 10:00 + 3 working days: Tuesday 10:00 (the weekend skipped).
        assert_eq!(
            w.add_offset(utc("2024-11-07T10:00:00Z"), Offset::Days(3)),
            utc("2024-11-12T10:00:00Z")
        );
    }

    #[test]
    fn between_counts_only_working_hours() {
        let w = shipped();
        assert_eq!(
            w.between(utc("2024-11-29T16:30:00Z"), utc("2024-12-02T08:30:00Z")),
            hours(2)
        );
        assert_eq!(
            w.between(utc("2024-11-30T00:00:00Z"), utc("2024-12-01T23:00:00Z")),
            Duration::zero()
        );
        assert_eq!(
            w.between(utc("2024-12-02T08:30:00Z"), utc("2024-11-29T16:30:00Z")),
            Duration::zero()
        );
        // A whole week: five days of ten hours.
        assert_eq!(
            w.between(utc("2024-11-04T00:00:00Z"), utc("2024-11-11T00:00:00Z")),
            hours(50)
        );
    }

    #[test]
    fn every_shipped_bank_holiday_is_a_weekday_and_the_list_reaches_2027() {
        let w = shipped();
        assert!(w
            .holidays
            .iter()
            .all(|d| !matches!(d.weekday(), Weekday::Sat | Weekday::Sun)));
        assert_eq!(w.holidays.len(), 32);
        assert_eq!(w.holidays_end(), Some(date("2027-12-28")));
        for d in [
            "2024-08-26",
            "2025-08-25",
            "2026-08-31",
            "2027-08-30",
            "2027-03-26",
        ] {
            assert!(!w.is_working_day(date(d)), "{d}");
        }
    }

    #[test]
    fn working_time_reads_as_people_say_it() {
        let day = hours(10);
        assert_eq!(describe(hours(2), day), "2 working hours");
        assert_eq!(describe(hours(1), day), "1 working hour");
        assert_eq!(
            describe(Duration::minutes(90), day),
            "1 working hour 30 minutes"
        );
        assert_eq!(describe(Duration::minutes(5), day), "5 minutes");
        assert_eq!(describe(hours(30), day), "3 working days");
        assert_eq!(describe(hours(10), day), "1 working day");
        assert_eq!(describe(hours(12), day), "12 working hours");
    }
}
