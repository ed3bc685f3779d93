//! Wall-clock times as the CRI and containerd carry them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, in nanoseconds since the Unix epoch (0 if the clock is before it).
pub fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// `2024-01-01T00:00:00.000000000Z`: RFC 3339, UTC, always nine fractional digits.
pub fn format_rfc3339_nanos(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, dd) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:09}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60,
        d.subsec_nanos()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m as u32, d as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(
            format_rfc3339_nanos(UNIX_EPOCH),
            "1970-01-01T00:00:00.000000000Z"
        );
        let t = UNIX_EPOCH + Duration::new(1_704_067_200, 5);
        assert_eq!(format_rfc3339_nanos(t), "2024-01-01T00:00:00.000000005Z");
        // 2000-02-29 12:34:56.123456789 (a leap day in a century leap year).
        let t = UNIX_EPOCH + Duration::new(951_827_696, 123_456_789);
        assert_eq!(format_rfc3339_nanos(t), "2000-02-29T12:34:56.123456789Z");
        let t = UNIX_EPOCH + Duration::new(4_102_444_799, 0);
        assert_eq!(format_rfc3339_nanos(t), "2099-12-31T23:59:59.000000000Z");
    }

    #[test]
    fn now_is_after_2020() {
        assert!(super::now_nanos() > 1_577_836_800_000_000_000);
    }
}
