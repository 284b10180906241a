//! Control-plane URL lists: the form of every `--control-plane` flag,
//! shared by the probe agent, the data plane and the admin CLI.

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
}
