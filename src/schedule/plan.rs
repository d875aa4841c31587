//! When a reminder or briefing is due, and when a cron schedule next fires, in UK time.
//!
//! Day offsets are calendar days in Europe/London at the same wall-clock time; hour and minute
//! offsets are exact durations. A wall-clock time that does not exist (the hour skipped in
//! spring) becomes the next instant that does; one that happens twice (the hour repeated in
//! autumn) is taken the first time.

use crate::config::Offset;
use chrono::{DateTime, Duration, TimeZone, Utc};
use chrono_tz::Europe::London;

pub use crate::uk_time::london_instant;

/// When something `offset` before `start` is due.
pub fn due_at(start: DateTime<Utc>, offset: Offset) -> DateTime<Utc> {
    match offset {
        Offset::Exact(d) => start - d,
        Offset::Days(n) => {
            let local = start.with_timezone(&London).naive_local();
            london_instant(local - Duration::days(n.into()))
        }
    }
}

/// The first time `schedule` (read in UK wall-clock time) fires strictly after `after`.
///
/// The cron crate is given wall-clock times as if they were UTC, and each firing is then placed
/// with [`london_instant`]: so a skipped time fires once at the next valid instant and a repeated
/// time fires once, the first time it happens.
pub fn next_fire(schedule: &cron::Schedule, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let local_after = after.with_timezone(&London).naive_local();
    // Start a little before `after` in wall-clock terms: a firing in a spring gap is moved
    // forward, past wall-clock times that come after it.
    let from = Utc.from_utc_datetime(&(local_after - Duration::hours(3)));
    let mut best: Option<DateTime<Utc>> = None;
    for wall in schedule.after(&from).take(10_000) {
        let wall = wall.naive_utc();
        if let Some(b) = best {
            // Nothing later in wall-clock order can come before `b` once we are 3 hours past it.
            if wall > b.with_timezone(&London).naive_local() + Duration::hours(3) {
                break;
            }
        }
        let instant = london_instant(wall);
        if instant > after && best.is_none_or(|b| instant < b) {
            best = Some(instant);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn hour_offsets_are_exact_and_day_offsets_keep_the_wall_clock() {
        let start = utc("2024-10-02T15:30:00+01:00");
        assert_eq!(
            due_at(start, Offset::Exact(Duration::hours(1))),
            utc("2024-10-02T13:30:00Z")
        );
        assert_eq!(due_at(start, Offset::Days(1)), utc("2024-10-01T14:30:00Z"));
        // Across the autumn change (27 October 2024): 3:30pm GMT on 1 Nov, 7 days before is
        // 3:30pm BST on 25 Oct, which is 14:30 UTC, not 15:30.
        let start = utc("2024-11-01T15:30:00Z");
        assert_eq!(due_at(start, Offset::Days(7)), utc("2024-10-25T14:30:00Z"));
        assert_eq!(
            due_at(start, Offset::Exact(Duration::hours(168))),
            utc("2024-10-25T15:30:00Z")
        );
        // Across the spring change (30 March 2025).
        let start = utc("2025-04-02T16:00:00+01:00");
        assert_eq!(due_at(start, Offset::Days(7)), utc("2025-03-26T16:00:00Z"));
    }

    #[test]
    fn a_skipped_wall_clock_time_moves_forward_and_a_repeated_one_is_taken_first() {
        // 01:30 on 30 March 2025 does not exist in London: the clocks jump from 01:00 GMT to
        // 02:00 BST, which is the next valid instant.
        let gap = chrono::NaiveDateTime::from_str("2025-03-30T01:30:00").unwrap();
        assert_eq!(london_instant(gap), utc("2025-03-30T01:00:00Z"));
        // 01:30 on 27 October 2024 happens twice: BST first (00:30 UTC).
        let twice = chrono::NaiveDateTime::from_str("2024-10-27T01:30:00").unwrap();
        assert_eq!(london_instant(twice), utc("2024-10-27T00:30:00Z"));
    }

    fn fires(expr: &str, from: &str, to: &str) -> Vec<DateTime<Utc>> {
        let schedule = cron::Schedule::from_str(expr).unwrap();
        let mut t = utc(from);
        let mut out = Vec::new();
        while let Some(next) = next_fire(&schedule, t) {
            assert!(next > t, "{next} is not strictly after {t}");
            if next > utc(to) || out.len() == 1_000 {
                break;
            }
            out.push(next);
            t = next;
        }
        out
    }

    #[test]
    fn the_default_digest_fires_at_nine_uk_time_in_summer_and_winter() {
        let got = fires(
            "0 0 9 * * Mon",
            "2024-10-20T00:00:00Z",
            "2024-11-05T00:00:00Z",
        );
        assert_eq!(
            got,
            [
                utc("2024-10-21T08:00:00Z"),
                utc("2024-10-28T09:00:00Z"),
                utc("2024-11-04T09:00:00Z")
            ]
        );
    }

    #[test]
    fn schedules_on_the_clock_change_days_fire_exactly_once() {
        // Spring: 01:30 is skipped; it fires once, at 02:00 BST when the clocks jump.
        assert_eq!(
            fires(
                "0 30 1 * * *",
                "2025-03-29T12:00:00Z",
                "2025-03-30T12:00:00Z"
            ),
            [utc("2025-03-30T01:00:00Z")]
        );
        // Autumn: 01:30 happens twice; it fires once, the first time.
        assert_eq!(
            fires(
                "0 30 1 * * *",
                "2024-10-26T12:00:00Z",
                "2024-10-27T12:00:00Z"
            ),
            [utc("2024-10-27T00:30:00Z")]
        );
        // Every 30 minutes through the spring gap: the skipped 01:00 and 01:30 and the real
        // 02:00 BST are one instant, and it fires once; then 02:30, 03:00 and 03:30 BST.
        let got = fires(
            "0 0/30 0-3 * * *",
            "2025-03-29T23:59:00Z",
            "2025-03-30T03:00:00Z",
        );
        assert_eq!(
            got,
            [
                utc("2025-03-30T00:00:00Z"),
                utc("2025-03-30T00:30:00Z"),
                utc("2025-03-30T01:00:00Z"),
                utc("2025-03-30T01:30:00Z"),
                utc("2025-03-30T02:00:00Z"),
                utc("2025-03-30T02:30:00Z"),
            ]
        );
    }
}
