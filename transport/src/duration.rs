//! Parsing of durations given on the command line.

use std::time::Duration;

/// Parses `250ms`, `30s`, `5m` or a bare number of seconds such as `1.5`.
///
/// # Errors
///
/// Returns a message naming the invalid input and the accepted forms.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let text = input.trim();
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1.0)
    } else if let Some(m) = text.strip_suffix('m') {
        (m, 60.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {input:?}: expected e.g. 250ms, 30s or 5m"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!(
            "invalid duration {input:?}: must be zero or positive"
        ));
    }
    Duration::try_from_secs_f64(value * scale)
        .map_err(|_| format!("invalid duration {input:?}: too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_parsed() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn bad_input_rejected() {
        for input in ["", "abc", "-1s", "1h", "NaN"] {
            assert!(parse_duration(input).is_err(), "{input}");
        }
    }
}
