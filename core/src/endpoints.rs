//! Control-plane endpoint lists and reconnect backoff, shared by the probe
//! agent, the data plane and the admin CLI. No IO: the caller supplies the
//! random number for jitter.

use std::time::Duration;

/// Parses `http://host:port[,http://host:port…]`, the form of every
/// `--control-plane` flag.
pub fn parse_urls(s: &str) -> Result<Vec<String>, String> {
    let urls: Vec<String> = s
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect();
    if urls.is_empty() {
        return Err("no endpoint given: expected http://host:port[,http://host:port...]".into());
    }
    for u in &urls {
        let rest = u
            .strip_prefix("http://")
            .or_else(|| u.strip_prefix("https://"))
            .ok_or_else(|| {
                format!("invalid endpoint {u:?}: must start with http:// or https://")
            })?;
        let hostport = rest.trim_end_matches('/');
        crate::model::split_address(hostport)
            .map_err(|e| format!("invalid endpoint {u:?}: {e}"))?;
    }
    Ok(urls)
}

/// Jittered exponential backoff ("full jitter" on the upper half): each
/// failure doubles the ceiling up to `max`; a success resets it.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    ceiling: Duration,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            ceiling: base,
        }
    }

    /// The delay before the next attempt; `unit` is a random number in [0, 1).
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let d = self.ceiling.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0));
        self.ceiling = (self.ceiling * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.ceiling = self.base;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_urls("http://a:1, http://b:2").expect("valid"),
            vec!["http://a:1".to_string(), "http://b:2".to_string()]
        );
        assert!(parse_urls("").is_err());
        assert!(parse_urls("a:1").unwrap_err().contains("http://"));
        assert!(parse_urls("http://a").is_err());
    }

    #[test]
    fn backoff_grows_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(b.next_delay(1.0), Duration::from_millis(100));
        assert_eq!(b.next_delay(0.0), Duration::from_millis(100));
        for _ in 0..10 {
            assert!(b.next_delay(1.0) <= Duration::from_secs(1));
        }
        b.reset();
        assert_eq!(b.next_delay(1.0), Duration::from_millis(100));
    }
}
