//! How the programs read durations: `--duration`, `--interval`, `--for`,
//! `--max-grant`, `--since`.

use std::time::Duration;

use crate::core::protocol::whole_seconds;

/// A duration as the options take it: `30s`, `2m`, `500ms`, `1.5s`, `1h`;
/// a bare number is seconds. From 1 ms to a week.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 0.001,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("{text:?}: a duration like 30s, 2m, 500ms")),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: a duration like 30s, 2m, 500ms"))?;
    let seconds = value * scale;
    if !(seconds >= 0.001 && seconds <= MAX_DURATION.as_secs_f64()) {
        return Err(format!(
            "{text:?}: at least 1ms, at most {} h",
            MAX_DURATION.as_secs() / 3600
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// The longest duration an option takes: a week.
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// A time limit of a grant (`attach --for`, `controller --max-grant`): as
/// [`parse_duration`] reads it, at least a second, rounded up to whole
/// seconds (the protocol's unit).
pub(crate) fn parse_grant_time(text: &str) -> Result<Duration, String> {
    let time = parse_duration(text)?;
    if time < Duration::from_secs(1) {
        return Err(format!("{text:?}: a grant lasts a second at least"));
    }
    Ok(Duration::from_secs(whole_seconds(time)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_30s_2m_500ms() {
        for (text, ms) in [
            ("30s", 30_000),
            ("2m", 120_000),
            ("500ms", 500),
            ("1.5s", 1_500),
            ("1h", 3_600_000),
            ("10", 10_000),
            (" 3 s ", 3_000),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(ms)),
                "{text}"
            );
        }
        for text in [
            "", "s", "0", "0s", "-1s", "1d", "ten", "1.2.3s", "inf", "9999h",
        ] {
            assert!(parse_duration(text).is_err(), "{text}");
        }
    }

    #[test]
    fn grant_times_are_whole_seconds_from_one_to_a_week() {
        assert_eq!(parse_grant_time("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_grant_time("1.2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_grant_time("1"), Ok(Duration::from_secs(1)));
        assert_eq!(
            parse_grant_time("168h"),
            Ok(Duration::from_secs(7 * 24 * 3600))
        );
        for text in ["0", "0s", "999ms", "-5m", "169h", "forever", "1d"] {
            assert!(parse_grant_time(text).is_err(), "{text}");
        }
    }
}
