//! HAProxy configuration → sections of settings the translation reads.
//! Keywords it does not use become warnings naming their line here.

use std::net::SocketAddr;
use std::time::Duration;

use super::server::{Server, server_opts};
use super::{dur, err, words};

/// The request of an HTTP check: `option httpchk` and `http-check send`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpChk {
    pub method: String,
    pub uri: String,
    /// The `Host` header, when the configuration sends one.
    pub host: Option<String>,
    pub headers: Vec<(String, String)>,
}

impl Default for HttpChk {
    /// HAProxy's `option httpchk` without arguments: `OPTIONS /`.
    fn default() -> Self {
        HttpChk {
            method: "OPTIONS".into(),
            uri: "/".into(),
            host: None,
            headers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Section {
    pub kind: String,
    pub name: String,
    pub line: usize,
    pub mode: Option<String>,
    /// Each `bind` line's addresses (`bind a,b` and port ranges expanded).
    pub binds: Vec<(usize, SocketAddr)>,
    pub default_backend: Option<String>,
    pub balance: Option<(usize, String)>,
    pub httpchk: Option<HttpChk>,
    pub expect: Option<(usize, bool, String, String)>,
    pub timeout_check: Option<Duration>,
    pub timeout_connect: Option<Duration>,
    pub default_server: Vec<String>,
    pub servers: Vec<Server>,
}

impl Section {
    /// Frontends take traffic (`bind`, `default_backend`).
    pub fn is_frontend(&self) -> bool {
        matches!(self.kind.as_str(), "frontend" | "listen")
    }

    /// Backends hold servers.
    pub fn is_backend(&self) -> bool {
        matches!(self.kind.as_str(), "backend" | "listen")
    }
}

/// Sections this translation reads; other HAProxy sections are skipped whole.
const SECTIONS: [&str; 5] = ["global", "defaults", "frontend", "backend", "listen"];
const OTHER_SECTIONS: [&str; 10] = [
    "resolvers",
    "peers",
    "userlist",
    "mailers",
    "program",
    "http-errors",
    "ring",
    "cache",
    "crt-store",
    "traces",
];

/// `bind` addresses: a comma-separated list of `[ip]:port[-port]`
/// (`*:80`, `:80`, `10.0.0.1:80,10.0.0.2:80`, `:8000-8003`, `[::1]:80`, `:::80`).
pub fn bind_addresses(line: usize, spec: &str) -> Result<Vec<SocketAddr>, String> {
    let mut out = Vec::new();
    for part in spec.split(',') {
        let part = part.trim();
        let (host, ports) = part.rsplit_once(':').ok_or_else(|| {
            err(
                line,
                format!("bind address {part:?}: expected [ip]:port (a unix socket or fd cannot be translated)"),
            )
        })?;
        let host = match host {
            "" | "*" => "0.0.0.0".to_string(),
            h if h.starts_with('[') => h.to_string(),
            h if h.contains(':') => format!("[{h}]"),
            h => h.to_string(),
        };
        let port = |p: &str| {
            p.parse::<u16>()
                .map_err(|_| err(line, format!("bind address {part:?}: invalid port {p:?}")))
        };
        let (lo, hi) = match ports.split_once('-') {
            Some((lo, hi)) => (port(lo)?, port(hi)?),
            None => (port(ports)?, port(ports)?),
        };
        if lo > hi || usize::from(hi - lo) >= trackwire_core::limits::MAX_LISTENERS {
            return Err(err(
                line,
                format!("bind address {part:?}: port range {lo}-{hi} is empty or too large"),
            ));
        }
        for p in lo..=hi {
            let addr = format!("{host}:{p}");
            out.push(trackwire_core::config::parse_bind(&addr).map_err(|e| {
                err(
                    line,
                    format!("{e} (a host name cannot be translated: use its IP address)"),
                )
            })?);
        }
    }
    Ok(out)
}

/// `option httpchk [<method> <uri> [<version>]] | option httpchk <uri>`; the
/// version word may carry `\r\n`-separated headers (the pre-2.2 idiom).
fn option_httpchk(line: usize, args: &[&str], warnings: &mut Vec<String>) -> HttpChk {
    let mut chk = HttpChk::default();
    match args {
        [] => {}
        [uri] => chk.uri = (*uri).to_string(),
        [method, uri, rest @ ..] => {
            chk.method = (*method).to_string();
            chk.uri = (*uri).to_string();
            // Unescaped spaces split the version word; HAProxy's intent is one word.
            let version = rest.join(" ");
            let (_, headers, bad) = words::httpchk_headers(&version);
            for b in bad {
                warnings.push(err(
                    line,
                    format!("option httpchk: {b:?} is not a `Name: value` header; ignored"),
                ));
            }
            for (name, value) in headers {
                add_header(&mut chk, line, &name, &value, warnings);
            }
        }
    }
    chk
}

/// A check request header: `Host` becomes the check's host; others are
/// kept when trackwire can send them, else reported.
fn add_header(chk: &mut HttpChk, line: usize, name: &str, value: &str, warnings: &mut Vec<String>) {
    if value.contains('%') {
        warnings.push(err(
            line,
            format!(
                "header {name}: {value:?} is a log-format expression, which cannot be translated; ignored"
            ),
        ));
        return;
    }
    let name_ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !name_ok || value.chars().any(|c| c.is_control() && c != '\t') {
        warnings.push(err(
            line,
            format!("header {name:?}: {value:?} cannot be sent by a trackwire check; ignored"),
        ));
        return;
    }
    if name.eq_ignore_ascii_case("host") {
        chk.host = Some(value.to_string());
    } else {
        chk.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        chk.headers.push((name.to_string(), value.to_string()));
    }
}

/// `http-check send [meth M] [uri U] [ver V] [hdr NAME VALUE]...`
fn http_check_send(
    line: usize,
    base: HttpChk,
    args: &[&str],
    warnings: &mut Vec<String>,
) -> HttpChk {
    let mut chk = base;
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).copied();
        match (args[i], value) {
            ("meth", Some(v)) => chk.method = v.to_string(),
            ("uri", Some(v)) => chk.uri = v.to_string(),
            ("ver", Some(_)) => {}
            ("hdr", Some(name)) => {
                let Some(v) = args.get(i + 2) else {
                    warnings.push(err(
                        line,
                        format!("http-check send hdr {name} has no value; ignored"),
                    ));
                    break;
                };
                add_header(&mut chk, line, name, v, warnings);
                i += 1;
            }
            ("comment", Some(_)) => {}
            (other, _) => {
                warnings.push(err(
                    line,
                    format!("http-check send option {other:?} cannot be translated; ignored"),
                ));
            }
        }
        i += 2;
    }
    chk
}

/// Reads the sections of a HAProxy configuration.
pub fn parse(text: &str, warnings: &mut Vec<String>) -> Result<Vec<Section>, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut sections: Vec<Section> = Vec::new();
    // `default-server` of the last `defaults` section, applied to every server.
    let mut global_defaults: Vec<String> = Vec::new();
    // Inside a section this translation does not read (resolvers, peers...).
    let mut skipping = false;
    for (idx, raw) in text.lines().enumerate() {
        let line = idx + 1;
        let split = words::split(raw).map_err(|e| err(line, e))?;
        warnings.extend(split.warnings.iter().map(|w| err(line, w)));
        let words: Vec<&str> = split.words.iter().map(String::as_str).collect();
        let Some(&keyword) = words.first() else {
            continue;
        };
        if SECTIONS.contains(&keyword) {
            skipping = false;
            let name = words.get(1).map(|s| s.to_string()).unwrap_or_default();
            let kind = keyword.to_string();
            // HAProxy refuses two proxies of one name that share a capability.
            let clash = |other: &Section| {
                other.name == name
                    && matches!(
                        (kind.as_str(), other.kind.as_str()),
                        ("backend", "backend" | "listen")
                            | ("frontend", "frontend" | "listen")
                            | ("listen", "frontend" | "backend" | "listen")
                    )
            };
            if let Some(first) = sections.iter().find(|s| clash(s)) {
                return Err(err(
                    line,
                    format!(
                        "{kind} {name} has the same name as the {} at line {} (HAProxy refuses this)",
                        first.kind, first.line
                    ),
                ));
            }
            sections.push(Section {
                kind,
                name,
                line,
                ..Section::default()
            });
            continue;
        }
        if OTHER_SECTIONS.contains(&keyword) {
            warnings.push(err(line, format!("section {keyword} ignored")));
            skipping = true;
            continue;
        }
        if skipping {
            continue;
        }
        let Some(sec) = sections.last_mut() else {
            return Err(err(line, "keyword outside of any section"));
        };
        if sec.kind == "global" {
            warnings.push(err(line, format!("global setting {keyword:?} ignored")));
            continue;
        }
        let ignored = |what: &str| err(line, format!("{what} in a {} section ignored", sec.kind));
        match (keyword, words.get(1).copied()) {
            ("mode", Some(m)) => sec.mode = Some(m.to_string()),
            ("bind", Some(addrs)) if sec.is_frontend() => {
                if words.len() > 2 {
                    warnings.push(err(line, format!("bind options {:?} ignored", &words[2..])));
                }
                for a in bind_addresses(line, addrs)? {
                    sec.binds.push((line, a));
                }
            }
            ("default_backend", Some(b)) if sec.kind != "backend" => {
                sec.default_backend = Some(b.to_string());
            }
            ("use_backend", Some(b)) if sec.is_frontend() => {
                if words.len() > 2 {
                    return Err(err(
                        line,
                        "use_backend with a condition cannot be translated (a trackwire listener routes to one pool)",
                    ));
                }
                sec.default_backend = Some(b.to_string());
            }
            ("bind" | "default_backend" | "use_backend", _) => warnings.push(ignored(keyword)),
            ("balance", Some(b)) => sec.balance = Some((line, b.to_string())),
            ("option", Some("httpchk")) => {
                sec.httpchk = Some(option_httpchk(line, &words[2..], warnings));
            }
            ("option", Some("tcp-check")) => {}
            ("http-check", Some("send")) => {
                let base = sec.httpchk.clone().unwrap_or_default();
                sec.httpchk = Some(http_check_send(line, base, &words[2..], warnings));
            }
            ("http-check", Some("expect")) => {
                let (neg, rest) = match words.get(2) {
                    Some(&"!") => (true, &words[3..]),
                    _ => (false, &words[2..]),
                };
                if rest.len() < 2 {
                    return Err(err(line, "http-check expect needs a match and a pattern"));
                }
                sec.expect = Some((line, neg, rest[0].to_string(), rest[1..].join(" ")));
            }
            ("timeout", Some("check")) => {
                sec.timeout_check = Some(dur(line, words.get(2).copied().unwrap_or(""))?);
            }
            ("timeout", Some("connect")) => {
                sec.timeout_connect = Some(dur(line, words.get(2).copied().unwrap_or(""))?);
            }
            ("default-server", _) => {
                sec.default_server = words[1..].iter().map(|s| s.to_string()).collect();
                if sec.kind == "defaults" {
                    global_defaults = sec.default_server.clone();
                }
            }
            ("server", Some(name)) if sec.is_backend() => {
                let address = words
                    .get(2)
                    .ok_or_else(|| err(line, format!("server {name} needs an address")))?;
                let mut srv = Server {
                    line,
                    name: name.to_string(),
                    address: address.to_string(),
                    ..Server::default()
                };
                let inherited: Vec<&str> = global_defaults
                    .iter()
                    .chain(sec.default_server.iter())
                    .map(String::as_str)
                    .collect();
                server_opts(&mut srv, line, &inherited, warnings)?;
                server_opts(&mut srv, line, &words[3..], warnings)?;
                sec.servers.push(srv);
            }
            ("server", _) => warnings.push(ignored("server")),
            (kw, Some(arg)) if matches!(kw, "option" | "timeout" | "http-check" | "no") => {
                warnings.push(err(
                    line,
                    format!("{} keyword \"{kw} {arg}\" ignored", sec.kind),
                ));
            }
            (kw, _) => warnings.push(err(line, format!("{} keyword {kw:?} ignored", sec.kind))),
        }
    }
    Ok(sections)
}
