//! UTC timestamps in the ISO 8601 form mManager answers with (`2025-01-22T08:30:00.123456+00:00`).

use std::time::{SystemTime, UNIX_EPOCH};

use berth_core::calendar::civil_from_days;

/// Now, as `YYYY-MM-DDTHH:MM:SS.ffffff+00:00`.
pub fn utc_now() -> String {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format_utc(since_epoch.as_secs(), since_epoch.subsec_micros())
}

/// Formats Unix seconds and microseconds as an ISO 8601 UTC timestamp with `+00:00`.
pub fn format_utc(unix_secs: u64, micros: u32) -> String {
    let days = (unix_secs / 86_400) as i64;
    let secs_of_day = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}+00:00",
        secs_of_day / 3600,
        secs_of_day % 3600 / 60,
        secs_of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants_format_exactly() {
        assert_eq!(format_utc(0, 0), "1970-01-01T00:00:00.000000+00:00");
        assert_eq!(
            format_utc(951_782_400, 5),
            "2000-02-29T00:00:00.000005+00:00"
        );
        assert_eq!(
            format_utc(1_737_534_600, 123_456),
            "2025-01-22T08:30:00.123456+00:00"
        );
        assert_eq!(
            format_utc(4_102_444_799, 0),
            "2099-12-31T23:59:59.000000+00:00"
        );
    }

    #[test]
    fn now_looks_like_a_timestamp() {
        let now = utc_now();
        assert_eq!(now.len(), 32, "{now}");
        assert!(now.ends_with("+00:00"));
    }
}
