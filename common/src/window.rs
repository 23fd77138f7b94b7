//! Calendar UTC windows of limits (`minute`, `hour`, `day`, `month`). Control and the
//! worker both identify a window by its first millisecond, computed here, so the two
//! agree on which window a consumption belongs to.

/// A fixed calendar window in UTC. A month starts on the 1st at 00:00 UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Window {
    Minute,
    Hour,
    Day,
    Month,
}

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

impl Window {
    pub const ALL: &'static str = "minute, hour, day, month";

    pub fn parse(s: &str) -> Option<Window> {
        Some(match s {
            "minute" => Window::Minute,
            "hour" => Window::Hour,
            "day" => Window::Day,
            "month" => Window::Month,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Window::Minute => "minute",
            Window::Hour => "hour",
            Window::Day => "day",
            Window::Month => "month",
        }
    }

    /// The first millisecond of the window that holds `ms` (epoch milliseconds, UTC).
    pub fn start_ms(self, ms: i64) -> i64 {
        match self {
            Window::Minute => ms.div_euclid(MINUTE_MS) * MINUTE_MS,
            Window::Hour => ms.div_euclid(HOUR_MS) * HOUR_MS,
            Window::Day => ms.div_euclid(DAY_MS) * DAY_MS,
            Window::Month => {
                let (y, m, _) = civil_from_days(ms.div_euclid(DAY_MS));
                days_from_civil(y, m, 1) * DAY_MS
            }
        }
    }

    /// The first millisecond after the window that holds `ms` (when it resets).
    pub fn end_ms(self, ms: i64) -> i64 {
        let start = self.start_ms(ms);
        match self {
            Window::Minute => start + MINUTE_MS,
            Window::Hour => start + HOUR_MS,
            Window::Day => start + DAY_MS,
            Window::Month => {
                let (y, m, _) = civil_from_days(start.div_euclid(DAY_MS));
                let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                days_from_civil(y, m, 1) * DAY_MS
            }
        }
    }
}

/// (year, month 1..=12, day 1..=31) of a day number (days since 1970-01-01), by
/// Howard Hinnant's `civil_from_days`.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    // d is 1..=31 and m 1..=12 by construction.
    (y, m as u32, d as u32)
}

/// Days since 1970-01-01 of a civil date (Hinnant's `days_from_civil`).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Epoch ms of a UTC date and time.
    fn at(y: i64, mo: u32, d: u32, h: i64, mi: i64, s: i64, ms: i64) -> i64 {
        days_from_civil(y, mo, d) * DAY_MS + h * HOUR_MS + mi * MINUTE_MS + s * 1000 + ms
    }

    #[test]
    fn civil_round_trips() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        for z in (-800_000..800_000).step_by(37) {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }

    #[test]
    fn minute_hour_day() {
        let t = at(2026, 12, 5, 15, 59, 42, 123);
        assert_eq!(Window::Minute.start_ms(t), at(2026, 12, 5, 15, 59, 0, 0));
        assert_eq!(Window::Minute.end_ms(t), at(2026, 12, 5, 16, 0, 0, 0));
        assert_eq!(Window::Hour.start_ms(t), at(2026, 12, 5, 15, 0, 0, 0));
        assert_eq!(Window::Hour.end_ms(t), at(2026, 12, 5, 16, 0, 0, 0));
        assert_eq!(Window::Day.start_ms(t), at(2026, 12, 5, 0, 0, 0, 0));
        assert_eq!(Window::Day.end_ms(t), at(2026, 12, 6, 0, 0, 0, 0));
        // The first millisecond belongs to its window, the last one too.
        let m = at(2026, 1, 1, 0, 0, 0, 0);
        assert_eq!(Window::Minute.start_ms(m), m);
        assert_eq!(Window::Minute.start_ms(m - 1), m - MINUTE_MS);
        assert_eq!(Window::Day.start_ms(-1), -DAY_MS);
    }

    #[test]
    fn months_at_their_boundaries() {
        let cases = [
            // (instant, month start, next month start)
            (
                at(2026, 12, 31, 23, 59, 59, 999),
                at(2026, 12, 1, 0, 0, 0, 0),
                at(2027, 1, 1, 0, 0, 0, 0),
            ),
            (
                at(2027, 1, 1, 0, 0, 0, 0),
                at(2027, 1, 1, 0, 0, 0, 0),
                at(2027, 2, 1, 0, 0, 0, 0),
            ),
            (
                at(2024, 2, 29, 12, 0, 0, 0),
                at(2024, 2, 1, 0, 0, 0, 0),
                at(2024, 3, 1, 0, 0, 0, 0),
            ),
            (
                at(2023, 2, 28, 23, 59, 59, 999),
                at(2023, 2, 1, 0, 0, 0, 0),
                at(2023, 3, 1, 0, 0, 0, 0),
            ),
            (
                at(2100, 3, 1, 0, 0, 0, 0),
                at(2100, 3, 1, 0, 0, 0, 0),
                at(2100, 4, 1, 0, 0, 0, 0),
            ),
            (
                at(2000, 2, 29, 0, 0, 0, 0),
                at(2000, 2, 1, 0, 0, 0, 0),
                at(2000, 3, 1, 0, 0, 0, 0),
            ),
            (
                at(2026, 4, 30, 23, 59, 59, 999),
                at(2026, 4, 1, 0, 0, 0, 0),
                at(2026, 5, 1, 0, 0, 0, 0),
            ),
        ];
        for (t, start, end) in cases {
            assert_eq!(Window::Month.start_ms(t), start, "{t}");
            assert_eq!(Window::Month.end_ms(t), end, "{t}");
        }
        assert_eq!(
            at(2027, 1, 1, 0, 0, 0, 0) - at(2026, 12, 1, 0, 0, 0, 0),
            31 * DAY_MS
        );
        assert_eq!(
            at(2024, 3, 1, 0, 0, 0, 0) - at(2024, 2, 1, 0, 0, 0, 0),
            29 * DAY_MS
        );
    }

    #[test]
    fn every_instant_lies_in_its_window() {
        for w in [Window::Minute, Window::Hour, Window::Day, Window::Month] {
            assert_eq!(Window::parse(w.as_str()), Some(w));
            let mut t = at(2023, 11, 30, 23, 0, 0, 0);
            while t < at(2024, 3, 2, 0, 0, 0, 0) {
                let (s, e) = (w.start_ms(t), w.end_ms(t));
                assert!(s <= t && t < e, "{w:?} {t}");
                assert_eq!(w.start_ms(e), e, "{w:?}: the end is the next window's start");
                t += 7 * HOUR_MS + 13 * MINUTE_MS + 17_001;
            }
        }
    }
}
