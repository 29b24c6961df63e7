//! Wall-clock helpers: microseconds since the UNIX epoch for event timestamps, and the UTC
//! stamp that names a results folder.

use std::time::{SystemTime, UNIX_EPOCH};

/// Returns the current wall-clock time in microseconds since the UNIX epoch, or 0 if the
/// system clock is set before 1970.
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
        })
}

/// Formats the current UTC time as `YYYYMMDDTHHMMSSZ` (ISO 8601 basic format).
pub fn utc_stamp() -> String {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    format_utc(seconds)
}

fn format_utc(unix_seconds: u64) -> String {
    let days = i64::try_from(unix_seconds / 86_400).unwrap_or(0);
    let second_of_day = unix_seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    )
}

/// Converts days since 1970-01-01 to a proleptic Gregorian (year, month, day), counting in
/// 400-year eras of 146,097 days that start on 1 March so that leap days fall at an era's end.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use super::format_utc;

    #[test]
    fn utc_stamp_epoch() {
        assert_eq!(format_utc(0), "19700101T000000Z");
    }

    #[test]
    fn utc_stamp_leap_day() {
        // 2024-02-29 12:34:56 UTC.
        assert_eq!(format_utc(1_709_210_096), "20240229T123456Z");
    }

    #[test]
    fn utc_stamp_year_end() {
        // 1999-12-31 23:59:59 UTC.
        assert_eq!(format_utc(946_684_799), "19991231T235959Z");
    }
}
