//! Times for people: UK local time (Europe/London), written the way the GOV.UK page writes
//! them: "Wednesday 2 October 2024, 3:30pm to 4:30pm".

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Europe::London;

/// "Wednesday 2 October 2024"
pub fn date(t: DateTime<Utc>) -> String {
    London
        .from_utc_datetime(&t.naive_utc())
        .format("%A %-d %B %Y")
        .to_string()
}

/// "3:30pm"
pub fn clock(t: DateTime<Utc>) -> String {
    London
        .from_utc_datetime(&t.naive_utc())
        .format("%-I:%M%P")
        .to_string()
}

/// "Wednesday 2 October 2024, 3:30pm"
pub fn date_time(t: DateTime<Utc>) -> String {
    format!("{}, {}", date(t), clock(t))
}

/// "Wednesday 2 October 2024, 3:30pm to 4:30pm"; the end's date is named when it differs.
pub fn range(start: DateTime<Utc>, end: DateTime<Utc>) -> String {
    if date(start) == date(end) {
        format!("{}, {} to {}", date(start), clock(start), clock(end))
    } else {
        format!("{} to {}", date_time(start), date_time(end))
    }
}

/// The instant of a UK wall-clock time: the first of two, or the next valid one after a gap.
pub fn london_instant(local: chrono::NaiveDateTime) -> DateTime<Utc> {
    let mut probe = local;
    // London's gaps are one hour; step by minutes so any gap length would still resolve.
    for _ in 0..=180 {
        match London.from_local_datetime(&probe) {
            chrono::LocalResult::Single(t) => return t.with_timezone(&Utc),
            chrono::LocalResult::Ambiguous(first, _) => return first.with_timezone(&Utc),
            chrono::LocalResult::None => probe += chrono::Duration::minutes(1),
        }
    }
    Utc.from_utc_datetime(&local)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn writes_times_as_the_page_does_in_summer_and_winter() {
        assert_eq!(
            range(
                utc("2024-10-02T15:30:00+01:00"),
                utc("2024-10-02T16:30:00+01:00")
            ),
            "Wednesday 2 October 2024, 3:30pm to 4:30pm"
        );
        assert_eq!(
            range(utc("2024-11-25T15:30:00Z"), utc("2024-11-25T16:30:00Z")),
            "Monday 25 November 2024, 3:30pm to 4:30pm"
        );
        assert_eq!(
            range(utc("2024-10-22T11:00:00Z"), utc("2024-10-22T12:00:00Z")),
            "Tuesday 22 October 2024, 12:00pm to 1:00pm"
        );
    }

    #[test]
    fn a_moment_and_a_range_over_midnight_name_their_dates() {
        assert_eq!(
            date_time(utc("2025-03-30T00:30:00Z")),
            "Sunday 30 March 2025, 12:30am"
        );
        // After the spring change: 01:30 UTC is 2:30am BST.
        assert_eq!(
            date_time(utc("2025-03-30T01:30:00Z")),
            "Sunday 30 March 2025, 2:30am"
        );
        assert_eq!(
            range(utc("2024-12-31T23:00:00Z"), utc("2025-01-01T01:00:00Z")),
            "Tuesday 31 December 2024, 11:00pm to Wednesday 1 January 2025, 1:00am"
        );
    }
}
