//! Times for people: tables show RFC 3339 timestamps and ages ("3 min ago"), never epoch
//! milliseconds (JSON output keeps both).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `2026-11-29T20:45:58Z` (to the second); `-` for 0, which means "never" in Ferry's records.
pub fn rfc3339(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// A rough span: `45 s`, `3 min`, `2 h 5 min`, `3 d 4 h`.
pub fn span(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0..=59 => format!("{secs} s"),
        60..=3_599 => format!("{} min", secs / 60),
        3_600..=86_399 => match (secs % 3_600) / 60 {
            0 => format!("{} h", secs / 3_600),
            min => format!("{} h {min} min", secs / 3_600),
        },
        _ => match (secs % 86_400) / 3_600 {
            0 => format!("{} d", secs / 86_400),
            h => format!("{} d {h} h", secs / 86_400),
        },
    }
}

/// `3 min ago` or `in 3 min`, relative to `now_ms`; `-` for 0.
pub fn relative(ms: u64, now_ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    if ms <= now_ms {
        format!("{} ago", span(Duration::from_millis(now_ms - ms)))
    } else {
        format!("in {}", span(Duration::from_millis(ms - now_ms)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_like_a_person_would_say_them() {
        let now = 1_764_450_000_000;
        let cases: &[(u64, &str, &str)] = &[
            (0, "-", "-"),
            (now, "2025-11-29T21:00:00Z", "0 s ago"),
            (now - 45_000, "2025-11-29T20:59:15Z", "45 s ago"),
            (
                now - 3 * 60_000 - 5_000,
                "2025-11-29T20:56:55Z",
                "3 min ago",
            ),
            (now - 2 * 3_600_000, "2025-11-29T19:00:00Z", "2 h ago"),
            (
                now + 11 * 3_600_000 + 59 * 60_000,
                "2025-11-30T08:59:00Z",
                "in 11 h 59 min",
            ),
            (
                now - 3 * 86_400_000 - 4 * 3_600_000,
                "2025-11-26T17:00:00Z",
                "3 d 4 h ago",
            ),
        ];
        for &(ms, absolute, rel) in cases {
            assert_eq!(
                (rfc3339(ms).as_str(), relative(ms, now).as_str()),
                (absolute, rel),
                "{ms}"
            );
        }
    }
}
