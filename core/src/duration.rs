//! Durations as operators write them in HAProxy and TOML configs: `500ms`,
//! `2s`, `1m`, `1h`; a bare number is milliseconds, as in HAProxy.
//!
//! Durations are stored and sent in whole milliseconds, so [`parse`] refuses
//! what milliseconds cannot represent exactly (`1us`, `1500us`) instead of
//! storing something else; `2000us` is `2ms`.

use std::time::Duration;

pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "invalid duration {s:?}: expected a number with a unit such as 500ms or 2s"
        ));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: number too large"))?;
    let ms = match unit {
        "" | "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "us" => {
            if !n.is_multiple_of(1_000) {
                return Err(format!(
                    "invalid duration {s:?}: durations are whole milliseconds; {n}us is not"
                ));
            }
            Some(n / 1_000)
        }
        _ => {
            return Err(format!(
                "invalid duration {s:?}: unknown unit {unit:?} (use us, ms, s, m or h)"
            ));
        }
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("invalid duration {s:?}: too large"))
}

/// Whether `d` is a whole number of milliseconds (what the store and the wire carry).
pub fn is_whole_millis(d: Duration) -> bool {
    d.subsec_nanos().is_multiple_of(1_000_000)
}

/// Formats a duration the way [`parse`] reads it, choosing the largest exact unit.
/// (A duration of a fraction of a millisecond, which [`parse`] refuses, is shown in
/// microseconds, so error messages never round it.)
pub fn format(d: Duration) -> String {
    if !is_whole_millis(d) {
        return format!("{}us", d.as_micros());
    }
    let ms = d.as_millis();
    if ms == 0 {
        return "0ms".into();
    }
    if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1_000) {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse("1500"), Ok(Duration::from_millis(1500)));
        assert!(parse("2x").unwrap_err().contains("unknown unit"));
        assert!(parse("s").is_err());
        assert!(parse("").is_err());
        assert_eq!(parse("2000us"), Ok(Duration::from_millis(2)));
    }

    #[test]
    fn refuses_what_milliseconds_cannot_hold() {
        // These were stored as 0 ms (then read back as the 2 s default) and 1 ms.
        for s in ["1us", "999us", "1500us"] {
            let e = parse(s).expect_err(s);
            assert!(e.contains("whole milliseconds"), "{s}: {e}");
            assert!(e.contains(s), "{s}: {e}");
        }
        assert_eq!(format(Duration::from_micros(1500)), "1500us");
        assert!(!is_whole_millis(Duration::from_micros(1500)));
        assert!(is_whole_millis(Duration::from_millis(1500)));
    }

    #[test]
    fn format_round_trips() {
        for s in ["500ms", "2s", "1m", "1h", "1500ms"] {
            let d = parse(s).expect("valid");
            assert_eq!(parse(&format(d)), Ok(d));
        }
    }
}
