//! HAProxy's configuration lexer: a line into words, as HAProxy splits it.
//!
//! Words are separated by unescaped spaces or tabs; an unquoted, unescaped
//! `#` starts a comment. A backslash escapes a space, `#`, `\`, or a quote,
//! and `\r`, `\n`, `\t`, `\xHH` stand for those bytes (how the old
//! `option httpchk GET / HTTP/1.1\r\nHost:\ www` syntax smuggles headers in).
//! Double quotes group and keep escapes (and would expand `$VARIABLES`,
//! which an import cannot do: that is reported); single quotes group
//! literally.

/// A line's words, and what of it could not be read as HAProxy would.
#[derive(Debug, Default, PartialEq)]
pub struct Line {
    pub words: Vec<String>,
    pub warnings: Vec<String>,
}

/// Splits one line into words, or says why HAProxy would refuse it.
pub fn split(line: &str) -> Result<Line, String> {
    let mut out = Line::default();
    let mut word = String::new();
    // Whether a word is open: `""` is an (empty) word, two spaces are not.
    let mut open = false;
    let mut chars = line.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some('\''), '\'') | (Some('"'), '"') => quote = None,
            (Some('\''), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                open = true;
            }
            (None, ' ' | '\t') => {
                if open {
                    out.words.push(std::mem::take(&mut word));
                    open = false;
                }
            }
            (None, '#') => break,
            (_, '\\') => {
                open = true;
                match chars.next() {
                    Some('r') => word.push('\r'),
                    Some('n') => word.push('\n'),
                    Some('t') => word.push('\t'),
                    Some('x') => {
                        let hex: String = chars.by_ref().take(2).collect();
                        let byte = u8::from_str_radix(&hex, 16)
                            .ok()
                            .filter(|_| hex.len() == 2)
                            .ok_or_else(|| format!("invalid escape \\x{hex}"))?;
                        word.push(char::from(byte));
                    }
                    Some(e @ (' ' | '#' | '\\' | '\'' | '"' | '$')) => word.push(e),
                    // HAProxy keeps other backslashes (regexes rely on it).
                    Some(other) => {
                        word.push('\\');
                        word.push(other);
                    }
                    None => word.push('\\'),
                }
            }
            (Some('"'), '$') => {
                out.warnings.push(format!(
                    "environment variables are not expanded: {line:?} is read literally"
                ));
                word.push('$');
            }
            (_, c) => {
                word.push(c);
                open = true;
            }
        }
    }
    if let Some(q) = quote {
        return Err(format!("unterminated {q} quote"));
    }
    if open {
        out.words.push(word);
    }
    out.warnings.dedup();
    Ok(out)
}

/// Header lines smuggled into the old `option httpchk` version word:
/// `HTTP/1.1\r\nHost: www\r\nX-A: b` → version `HTTP/1.1` and the headers.
/// Lines that are not `Name: value` are returned as errors to report.
pub fn httpchk_headers(version: &str) -> (String, Vec<(String, String)>, Vec<String>) {
    let mut lines = version.split('\n').map(|l| l.trim_end_matches('\r'));
    let ver = lines.next().unwrap_or("").to_string();
    let (mut headers, mut bad) = (Vec::new(), Vec::new());
    for l in lines.filter(|l| !l.is_empty()) {
        match l.split_once(':') {
            Some((name, value)) if !name.trim().is_empty() => {
                headers.push((name.trim().to_string(), value.trim().to_string()));
            }
            _ => bad.push(l.to_string()),
        }
    }
    (ver, headers, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        split(line).expect("valid").words
    }

    #[test]
    fn splits_as_haproxy_does() {
        assert_eq!(
            words("  server s1 10.0.0.1:80 check  "),
            ["server", "s1", "10.0.0.1:80", "check"]
        );
        assert_eq!(words("bind :80 # comment"), ["bind", ":80"]);
        assert_eq!(
            words(r"option httpchk GET /healthz HTTP/1.1\r\nHost:\ api"),
            [
                "option",
                "httpchk",
                "GET",
                "/healthz",
                "HTTP/1.1\r\nHost: api"
            ]
        );
        assert_eq!(
            words(r#"http-check send hdr "X-A" "b c" uri '/a\ b' x\#y"#),
            [
                "http-check",
                "send",
                "hdr",
                "X-A",
                "b c",
                "uri",
                r"/a\ b",
                "x#y"
            ]
        );
        assert_eq!(words(r#"a "" b"#), ["a", "", "b"]);
        assert_eq!(words(r"rstring ^ok\d+$"), ["rstring", r"^ok\d+$"]);
        assert_eq!(words(r"x \x41"), ["x", "A"]);
        assert!(split("a \"open").is_err());
        assert!(split(r"a \xZZ").is_err());
        let l = split(r#"bind "fd@${FD}""#).expect("valid");
        assert!(l.warnings[0].contains("not expanded"), "{l:?}");
    }

    #[test]
    fn old_httpchk_headers() {
        let (ver, headers, bad) = httpchk_headers("HTTP/1.1\r\nHost: api\r\nX-A: b: c\r\nnope");
        assert_eq!(ver, "HTTP/1.1");
        assert_eq!(
            headers,
            [
                ("Host".to_string(), "api".to_string()),
                ("X-A".to_string(), "b: c".to_string())
            ]
        );
        assert_eq!(bad, ["nope"]);
    }
}
