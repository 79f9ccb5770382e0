//! Times on the command line.

pub use erpstream_schemas::rfc3339;

use super::ToolError;

/// Parses a point in time into epoch milliseconds: RFC 3339 (`2026-11-27T10:00:00Z`), a date
/// (`2026-11-27`, midnight UTC), epoch milliseconds, `now`, or a duration meaning that long
/// ago (`90m`, `1h`, `2days`).
pub fn parse_time(text: &str) -> Result<i64, ToolError> {
    parse_at(text, erpstream_schemas::now_millis())
}

fn parse_at(text: &str, now: i64) -> Result<i64, ToolError> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("now") {
        return Ok(now);
    }
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(at.timestamp_millis());
    }
    if let Ok(date) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(date
            .and_time(chrono::NaiveTime::MIN)
            .and_utc()
            .timestamp_millis());
    }
    if let Ok(millis) = text.parse::<i64>() {
        if millis < 100_000_000_000 {
            return Err(ToolError::usage(format!(
                "{text:?}: epoch times are read as milliseconds; this looks like seconds"
            )));
        }
        return Ok(millis);
    }
    match humantime::parse_duration(text) {
        Ok(ago) => Ok(now - ago.as_millis() as i64),
        Err(_) => Err(ToolError::usage(format!(
            "{text:?} is not a time: use RFC 3339 (2026-11-27T10:00:00Z), a date (2026-11-27), \
             epoch milliseconds, `now`, or a duration ago (90m, 2h)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_accepted_form() {
        let now = 1_795_000_000_000;
        assert_eq!(
            parse_at("2026-11-27T10:00:00Z", now).unwrap(),
            1_795_773_600_000
        );
        assert_eq!(
            parse_at("2026-11-27T11:00:00+01:00", now).unwrap(),
            1_795_773_600_000
        );
        assert_eq!(parse_at("2026-11-27", now).unwrap(), 1_795_737_600_000);
        assert_eq!(parse_at("1795773600000", now).unwrap(), 1_795_773_600_000);
        assert_eq!(parse_at("now", now).unwrap(), now);
        assert_eq!(parse_at("90m", now).unwrap(), now - 90 * 60_000);
        assert!(parse_at("1795773600", now).is_err());
        assert!(
            parse_at("yesterday-ish", now)
                .unwrap_err()
                .to_string()
                .contains("RFC 3339")
        );
    }
}
