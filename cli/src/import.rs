//! `trackwire import haproxy FILE`: translates a HAProxy configuration into
//! a trackwire document (pools + listeners).
//!
//! Understood: `global`/`defaults`/`frontend`/`backend`/`listen`, `mode`,
//! `bind`, `default_backend`, `use_backend` without a condition, `balance`,
//! `default-server`, `server … check | track B/S | weight | backup | port |
//! addr | inter | fastinter | downinter | rise | fall | check-ssl |
//! check-sni | verify none | ca-file | send-proxy | send-proxy-v2 |
//! init-state`, `option httpchk` (old and `http-check send` syntax),
//! `http-check expect [!] status|string|rstring`, `timeout check|connect`.
//! `track` chains are resolved: a `mode tcp` backend whose servers track
//! servers of a `mode http` backend becomes one pool whose check is the
//! monitoring backend's, and the monitoring backend itself is not emitted
//! unless a frontend routes to it. Everything else is reported on stderr
//! with its line number; what cannot be translated faithfully is an error.

use std::collections::BTreeMap;
use std::time::Duration;

use trackwire_core::config::{Balance, Document, ListenerSpec, ProxyProtocol};
use trackwire_core::model::{BodyMatch, split_address, validate_name};
use trackwire_core::{
    AdminState, BackendSpec, CheckKind, CheckSpec, HealthState, PoolSpec, Quorum, TlsSpec,
};

/// The result: the document and the warnings (each naming its line).
pub struct Imported {
    pub document: Document,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Default)]
struct Server {
    line: usize,
    name: String,
    address: String,
    check: bool,
    track: Option<(String, String)>,
    weight: Option<u32>,
    backup: bool,
    port: Option<u16>,
    addr: Option<String>,
    inter: Option<Duration>,
    fastinter: Option<Duration>,
    downinter: Option<Duration>,
    rise: Option<u32>,
    fall: Option<u32>,
    check_ssl: bool,
    check_sni: Option<String>,
    verify_none: bool,
    ca_file: Option<String>,
    send_proxy: Option<ProxyProtocol>,
    init_down: Option<bool>,
    disabled: bool,
    shutdown_sessions: bool,
}

#[derive(Debug, Clone, Default)]
struct Section {
    kind: String,
    name: String,
    line: usize,
    mode: Option<String>,
    binds: Vec<(usize, String)>,
    default_backend: Option<String>,
    balance: Option<(usize, String)>,
    httpchk: Option<(String, String)>,
    expect: Option<(usize, bool, String, String)>,
    timeout_check: Option<Duration>,
    timeout_connect: Option<Duration>,
    default_server: Vec<String>,
    servers: Vec<Server>,
}

fn err(line: usize, msg: impl std::fmt::Display) -> String {
    format!("line {line}: {msg}")
}

fn dur(line: usize, v: &str) -> Result<Duration, String> {
    trackwire_core::duration::parse(v).map_err(|e| err(line, e))
}

fn num<T: std::str::FromStr>(line: usize, what: &str, v: Option<&str>) -> Result<T, String> {
    v.and_then(|v| v.parse().ok())
        .ok_or_else(|| err(line, format!("{what} needs a number")))
}

/// Applies `server` / `default-server` options to `s`.
fn server_opts(
    s: &mut Server,
    line: usize,
    opts: &[&str],
    warnings: &mut Vec<String>,
) -> Result<(), String> {
    let mut i = 0;
    while i < opts.len() {
        let next = opts.get(i + 1).copied();
        let mut take = 1;
        match opts[i] {
            "check" => s.check = true,
            "no-check" => s.check = false,
            "backup" => s.backup = true,
            "disabled" => s.disabled = true,
            "check-ssl" => s.check_ssl = true,
            "send-proxy" => s.send_proxy = Some(ProxyProtocol::V1),
            "send-proxy-v2" => s.send_proxy = Some(ProxyProtocol::V2),
            "track" => {
                let t = next.ok_or_else(|| err(line, "track needs BACKEND/SERVER or SERVER"))?;
                s.track = Some(match t.split_once('/') {
                    Some((b, srv)) => (b.to_string(), srv.to_string()),
                    None => (String::new(), t.to_string()),
                });
                take = 2;
            }
            "weight" => {
                s.weight = Some(num(line, "weight", next)?);
                take = 2;
            }
            "port" => {
                s.port = Some(num(line, "port", next)?);
                take = 2;
            }
            "addr" => {
                s.addr = Some(
                    next.ok_or_else(|| err(line, "addr needs an address"))?
                        .to_string(),
                );
                take = 2;
            }
            "inter" | "fastinter" | "downinter" => {
                let d = dur(
                    line,
                    next.ok_or_else(|| err(line, format!("{} needs a time", opts[i])))?,
                )?;
                match opts[i] {
                    "inter" => s.inter = Some(d),
                    "fastinter" => s.fastinter = Some(d),
                    _ => s.downinter = Some(d),
                }
                take = 2;
            }
            "rise" => {
                s.rise = Some(num(line, "rise", next)?);
                take = 2;
            }
            "fall" => {
                s.fall = Some(num(line, "fall", next)?);
                take = 2;
            }
            "check-sni" => {
                s.check_sni = Some(
                    next.ok_or_else(|| err(line, "check-sni needs a name"))?
                        .to_string(),
                );
                take = 2;
            }
            "verify" => {
                match next {
                    Some("none") => s.verify_none = true,
                    Some("required") => s.verify_none = false,
                    _ => return Err(err(line, "verify takes none or required")),
                }
                take = 2;
            }
            "ca-file" => {
                s.ca_file = Some(
                    next.ok_or_else(|| err(line, "ca-file needs a path"))?
                        .to_string(),
                );
                take = 2;
            }
            "on-marked-down" => {
                match next {
                    Some("shutdown-sessions") => s.shutdown_sessions = true,
                    other => warnings.push(err(line, format!("on-marked-down {other:?} ignored"))),
                }
                take = 2;
            }
            "init-state" => {
                s.init_down = match next {
                    Some("down" | "fully-down") => Some(true),
                    Some("up" | "fully-up") => Some(false),
                    _ => {
                        return Err(err(
                            line,
                            "init-state takes up, fully-up, down or fully-down",
                        ));
                    }
                };
                take = 2;
            }
            other => {
                // Unknown option: skip it and, if it looks like it takes a value, that too.
                warnings.push(err(line, format!("server option {other:?} ignored")));
            }
        }
        i += take;
    }
    Ok(())
}

fn parse(text: &str, warnings: &mut Vec<String>) -> Result<Vec<Section>, String> {
    let mut sections: Vec<Section> = Vec::new();
    // `default-server` of the last `defaults` section, applied to every server.
    let mut global_defaults: Vec<String> = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let line = idx + 1;
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let words: Vec<&str> = content.split_whitespace().collect();
        if matches!(
            words[0],
            "global" | "defaults" | "frontend" | "backend" | "listen"
        ) {
            sections.push(Section {
                kind: words[0].to_string(),
                name: words.get(1).map(|s| s.to_string()).unwrap_or_default(),
                line,
                ..Section::default()
            });
            continue;
        }
        let Some(sec) = sections.last_mut() else {
            return Err(err(line, "keyword outside of any section"));
        };
        if sec.kind == "global" {
            warnings.push(err(line, format!("global setting {:?} ignored", words[0])));
            continue;
        }
        match (words[0], words.get(1).copied()) {
            ("mode", Some(m)) => sec.mode = Some(m.to_string()),
            ("bind", Some(addr)) => {
                if words.len() > 2 {
                    warnings.push(err(line, format!("bind options {:?} ignored", &words[2..])));
                }
                sec.binds.push((line, addr.to_string()));
            }
            ("default_backend", Some(b)) => sec.default_backend = Some(b.to_string()),
            ("use_backend", Some(b)) => {
                if words.len() > 2 {
                    return Err(err(
                        line,
                        "use_backend with a condition cannot be translated (a trackwire listener routes to one pool)",
                    ));
                }
                sec.default_backend = Some(b.to_string());
            }
            ("balance", Some(b)) => sec.balance = Some((line, b.to_string())),
            ("option", Some("httpchk")) => {
                // option httpchk [<method> <uri> [<version>]] | option httpchk <uri>
                let (meth, uri) = match (words.get(2), words.get(3)) {
                    (Some(m), Some(u)) => (m.to_string(), u.to_string()),
                    (Some(u), None) if u.starts_with('/') => ("OPTIONS".to_string(), u.to_string()),
                    _ => ("OPTIONS".to_string(), "/".to_string()),
                };
                sec.httpchk = Some((meth, uri));
            }
            ("option", Some("tcp-check")) => {}
            ("http-check", Some("send")) => {
                let (mut meth, mut uri) = sec
                    .httpchk
                    .clone()
                    .unwrap_or(("OPTIONS".to_string(), "/".to_string()));
                let mut i = 2;
                while i < words.len() {
                    match (words[i], words.get(i + 1)) {
                        ("meth", Some(v)) => meth = v.to_string(),
                        ("uri", Some(v)) => uri = v.to_string(),
                        ("ver", Some(_)) => {}
                        (other, _) => {
                            warnings.push(err(
                                line,
                                format!("http-check send option {other:?} ignored"),
                            ));
                        }
                    }
                    i += 2;
                }
                sec.httpchk = Some((meth, uri));
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
            ("timeout", Some(other)) => {
                warnings.push(err(line, format!("timeout {other} ignored")))
            }
            ("default-server", _) => {
                sec.default_server = words[1..].iter().map(|s| s.to_string()).collect();
                if sec.kind == "defaults" {
                    global_defaults = sec.default_server.clone();
                }
            }
            ("server", Some(name)) => {
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
            (kw, _) => warnings.push(err(line, format!("{} keyword {kw:?} ignored", sec.kind))),
        }
    }
    Ok(sections)
}

/// The check a server runs, from its backend's options and its own.
fn check_of(sec: &Section, defaults: Option<&Section>, s: &Server) -> Result<CheckSpec, String> {
    let d = CheckSpec::http_default();
    let httpchk = sec
        .httpchk
        .clone()
        .or_else(|| defaults.and_then(|x| x.httpchk.clone()));
    let expect = sec
        .expect
        .clone()
        .or_else(|| defaults.and_then(|x| x.expect.clone()));
    let timeout_check = sec
        .timeout_check
        .or_else(|| defaults.and_then(|x| x.timeout_check));
    let kind = match (&httpchk, s.check_ssl) {
        (Some(_), true) => CheckKind::Https,
        (Some(_), false) => CheckKind::Http,
        (None, _) => CheckKind::Tcp,
    };
    let interval = s.inter.unwrap_or(d.interval);
    let mut spec = CheckSpec {
        kind,
        interval,
        fast_interval: s.fastinter.unwrap_or(interval),
        down_interval: s.downinter.unwrap_or(interval),
        // HAProxy: `timeout check` (when set) bounds the check, else `inter`.
        timeout: timeout_check.map(|t| t.min(interval)).unwrap_or(interval),
        rise: s.rise.unwrap_or(d.rise),
        fall: s.fall.unwrap_or(d.fall),
        port: s.port,
        address: s.addr.clone(),
        ..d
    };
    if let Some((meth, uri)) = httpchk {
        spec.method = meth;
        spec.path = uri;
    }
    if let Some((line, neg, kind, pattern)) = expect {
        spec.expect_negate = neg;
        match kind.as_str() {
            "status" => {
                spec.expect_status = pattern.parse().map_err(|e| err(line, e))?;
            }
            "string" | "rstring" => {
                // HAProxy's body expectations ignore the status.
                spec.expect_status = "100-599".parse().map_err(|e: String| err(line, e))?;
                spec.expect_body = Some(if kind == "string" {
                    BodyMatch::Substring(pattern)
                } else {
                    BodyMatch::Regex(pattern)
                });
            }
            other => {
                return Err(err(
                    line,
                    format!("http-check expect {other} cannot be translated"),
                ));
            }
        }
    }
    if kind == CheckKind::Https {
        spec.tls = TlsSpec {
            server_name: s.check_sni.clone(),
            ca_file: s.ca_file.clone().map(Into::into),
            insecure: s.verify_none,
            ..TlsSpec::default()
        };
        if !s.verify_none && s.ca_file.is_none() {
            return Err(err(
                s.line,
                "check-ssl verifies certificates: add `verify none` or `ca-file`",
            ));
        }
    }
    Ok(spec)
}

/// Translates a HAProxy configuration.
pub fn haproxy(text: &str) -> Result<Imported, String> {
    let mut warnings = Vec::new();
    let sections = parse(text, &mut warnings)?;
    let defaults = sections.iter().rev().find(|s| s.kind == "defaults");
    let backends: BTreeMap<&str, &Section> = sections
        .iter()
        .filter(|s| s.kind == "backend" || s.kind == "listen")
        .map(|s| (s.name.as_str(), s))
        .collect();
    // Backends some frontend routes to (listen sections route to themselves).
    let mut routed: Vec<(&Section, &str)> = Vec::new();
    for s in sections
        .iter()
        .filter(|s| s.kind == "frontend" || s.kind == "listen")
    {
        let target = if s.kind == "listen" {
            Some(s.name.as_str())
        } else {
            s.default_backend.as_deref()
        };
        match target {
            Some(b) if backends.contains_key(b) => routed.push((s, b)),
            Some(b) => {
                return Err(err(
                    s.line,
                    format!("{} {} routes to unknown backend {b}", s.kind, s.name),
                ));
            }
            None => warnings.push(err(
                s.line,
                format!("{} {} has no default_backend; skipped", s.kind, s.name),
            )),
        }
    }
    let mut pools = Vec::new();
    let mut listeners = Vec::new();
    let mut emitted: Vec<&str> = Vec::new();
    for (front, bname) in &routed {
        let be = backends[bname];
        if !emitted.contains(bname) {
            emitted.push(bname);
            pools.push(pool_of(be, defaults, &backends)?);
        }
        for (line, bind) in &front.binds {
            let balance = match be.balance.as_ref().map(|(_, b)| b.as_str()) {
                None | Some("roundrobin") | Some("static-rr") => Balance::RoundRobin,
                Some("leastconn") => Balance::LeastConn,
                Some("source") => Balance::Source,
                Some("random") => Balance::Random,
                Some(other) => {
                    let l = be.balance.as_ref().map(|(l, _)| *l).unwrap_or(be.line);
                    warnings.push(err(
                        l,
                        format!("balance {other} has no equivalent; using roundrobin"),
                    ));
                    Balance::RoundRobin
                }
            };
            let proxies: Vec<Option<ProxyProtocol>> =
                be.servers.iter().map(|s| s.send_proxy).collect();
            if proxies.windows(2).any(|w| w[0] != w[1]) {
                return Err(err(
                    be.line,
                    "servers disagree on send-proxy; a trackwire listener sends it for all or none",
                ));
            }
            let shutdown: Vec<bool> = be.servers.iter().map(|s| s.shutdown_sessions).collect();
            if shutdown.windows(2).any(|w| w[0] != w[1]) {
                return Err(err(
                    be.line,
                    "servers disagree on on-marked-down shutdown-sessions",
                ));
            }
            let connect = be
                .timeout_connect
                .or_else(|| defaults.and_then(|d| d.timeout_connect))
                .unwrap_or(Duration::from_secs(5));
            let name = if front.binds.len() > 1 {
                format!("{}-{line}", front.name)
            } else {
                front.name.clone()
            };
            let bind = trackwire_core::config::parse_bind(bind).map_err(|e| err(*line, e))?;
            listeners.push(ListenerSpec {
                balance,
                connect_timeout: connect,
                send_proxy: proxies.first().copied().flatten(),
                shutdown_sessions_on_down: shutdown.first().copied().unwrap_or(false),
                ..ListenerSpec::new(&name, bind, bname)
            });
        }
    }
    for (name, be) in &backends {
        if !emitted.contains(name) && !be.servers.is_empty() {
            let tracked = backends.values().any(|b| {
                b.servers
                    .iter()
                    .any(|s| s.track.as_ref().is_some_and(|(tb, _)| tb == name))
            });
            if !tracked {
                warnings.push(err(
                    be.line,
                    format!("backend {name} is not routed to by any frontend; skipped"),
                ));
            }
        }
    }
    let document = Document { pools, listeners };
    document.validate().map_err(|e| e.to_string())?;
    Ok(Imported { document, warnings })
}

/// One pool from a backend, resolving `track` to the tracked server's check.
fn pool_of(
    be: &Section,
    defaults: Option<&Section>,
    backends: &BTreeMap<&str, &Section>,
) -> Result<PoolSpec, String> {
    validate_name(&be.name).map_err(|e| err(be.line, e))?;
    if be.servers.is_empty() {
        return Err(err(be.line, format!("backend {} has no servers", be.name)));
    }
    let mut checks: Vec<(usize, Option<CheckSpec>)> = Vec::new();
    let mut init_down = None;
    let mut out = Vec::new();
    for s in &be.servers {
        validate_name(&s.name).map_err(|e| err(s.line, e))?;
        split_address(&s.address).map_err(|e| err(s.line, e))?;
        // Follow track chains (monitoring/server-1 may itself track another).
        let (mut sec, mut srv) = (be, s);
        let mut hops = 0;
        while let Some((tb, ts)) = &srv.track {
            let target_sec = if tb.is_empty() {
                sec
            } else {
                backends
                    .get(tb.as_str())
                    .copied()
                    .ok_or_else(|| err(srv.line, format!("track: unknown backend {tb}")))?
            };
            srv = target_sec
                .servers
                .iter()
                .find(|x| &x.name == ts)
                .ok_or_else(|| err(srv.line, format!("track: unknown server {tb}/{ts}")))?;
            sec = target_sec;
            hops += 1;
            if hops > 16 {
                return Err(err(s.line, "track chain too long (a loop?)"));
            }
        }
        let mut check = if srv.check || srv.track.is_some() {
            Some(check_of(sec, defaults, srv)?)
        } else {
            None
        };
        // The checked server may sit at another address than traffic goes to.
        if let Some(c) = check.as_mut()
            && srv.address != s.address
        {
            let (h, p) = split_address(&srv.address).map_err(|e| err(srv.line, e))?;
            let (th, tp) = split_address(&s.address).map_err(|e| err(s.line, e))?;
            if c.address.is_none() && h != th {
                c.address = Some(h.to_string());
            }
            if c.port.is_none() && p != tp {
                c.port = Some(p);
            }
        }
        checks.push((s.line, check));
        if let Some(d) = s.init_down.or(srv.init_down) {
            init_down = Some(d);
        }
        out.push(BackendSpec {
            name: s.name.clone(),
            address: s.address.clone(),
            weight: s.weight.unwrap_or(1),
            admin_state: if s.disabled {
                AdminState::Maint
            } else {
                AdminState::Ready
            },
            backup: s.backup,
        });
    }
    // One check per pool: every server must agree (HAProxy allows mixing).
    let first = checks[0].1.clone();
    for (line, c) in &checks[1..] {
        if *c != first {
            return Err(err(
                *line,
                format!(
                    "servers of backend {} check differently (or some do not check); one trackwire pool has one check",
                    be.name
                ),
            ));
        }
    }
    Ok(PoolSpec {
        name: be.name.clone(),
        backends: out,
        check: first,
        quorum: Quorum::Majority,
        // HAProxy starts servers UP unless `init-state down`.
        initial_state: if init_down == Some(true) {
            HealthState::Down
        } else {
            HealthState::Up
        },
        replicas: trackwire_core::model::DEFAULT_REPLICAS,
        zone_spread: false,
        damping: None,
    })
}

/// `trackwire import haproxy FILE`.
pub fn run(path: &std::path::Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| crate::Invalid(format!("{}: {e}", path.display())))?;
    let imported =
        haproxy(&text).map_err(|e| crate::Invalid(format!("{}: {e}", path.display())))?;
    for w in &imported.warnings {
        eprintln!("warning: {}: {w}", path.display());
    }
    print!("{}", imported.document.to_toml());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use trackwire_core::StatusSet;

    #[test]
    fn seed_translates_one_to_one() {
        let seed = include_str!("../../deploy/examples/haproxy/seed.cfg");
        let i = haproxy(seed).expect("translates");
        let doc = &i.document;
        assert_eq!(doc.pools.len(), 1, "the monitoring backend is folded in");
        let p = &doc.pools[0];
        assert_eq!(p.name, "myApp");
        assert_eq!(p.backends.len(), 3);
        assert_eq!(p.backends[0].address, "backend-1.example.com:6443");
        let c = p.check.as_ref().expect("tracked check");
        assert_eq!(
            (c.kind, c.method.as_str(), c.path.as_str()),
            (CheckKind::Http, "GET", "/readyz")
        );
        assert_eq!(c.expect_status, StatusSet::single(200));
        assert_eq!(
            p.initial_state,
            HealthState::Up,
            "HAProxy starts servers UP"
        );
        assert_eq!(doc.listeners[0].bind.port(), 6443);
        assert_eq!(doc.listeners[0].pool, "myApp");
        // The output is a valid trackwire document, unchanged by a round trip.
        let again = Document::parse(&doc.to_toml()).expect("valid");
        assert_eq!(&again, doc);
    }

    #[test]
    fn kube_apiserver_with_check_ssl_verify_none() {
        let cfg = include_str!("../../deploy/examples/haproxy/kube-apiserver.cfg");
        let i = haproxy(cfg).expect("translates");
        let p = &i.document.pools[0];
        let c = p.check.as_ref().expect("check");
        assert_eq!((c.kind, c.path.as_str()), (CheckKind::Https, "/readyz"));
        assert!(c.tls.insecure, "verify none");
        assert_eq!(
            (c.interval, c.rise, c.fall),
            (Duration::from_secs(3), 2, 3),
            "from default-server"
        );
        assert_eq!(c.timeout, Duration::from_secs(2), "timeout check");
        assert!(
            i.warnings.iter().any(|w| w.contains("timeout client")),
            "{:?}",
            i.warnings
        );
        assert_eq!(
            i.document.listeners[0].connect_timeout,
            Duration::from_secs(5)
        );
    }

    #[test]
    fn patroni_with_the_new_http_check_syntax() {
        let cfg = include_str!("../../deploy/examples/haproxy/patroni.cfg");
        let i = haproxy(cfg).expect("translates");
        let p = &i.document.pools[0];
        assert_eq!(p.name, "postgres-primary");
        let c = p.check.as_ref().expect("check");
        assert_eq!(
            (c.method.as_str(), c.path.as_str(), c.port),
            ("GET", "/primary", Some(8008))
        );
        assert_eq!((c.interval, c.rise, c.fall), (Duration::from_secs(1), 1, 2));
        let l = &i.document.listeners[0];
        assert_eq!((l.bind.port(), l.pool.as_str()), (5432, "postgres-primary"));
        assert!(
            l.shutdown_sessions_on_down,
            "on-marked-down shutdown-sessions"
        );
    }

    #[test]
    fn untranslatable_configs_fail_with_a_line() {
        let e = haproxy(
            "frontend f
  bind :80
  use_backend b if is_api
backend b
  server s 127.0.0.1:1
",
        )
        .err()
        .expect("conditional routing");
        assert!(e.starts_with("line 3:"), "{e}");
        let e = haproxy(
            "frontend f
  bind :80
  default_backend b
backend b
  server s1 127.0.0.1:1 check
  server s2 127.0.0.1:2
",
        )
        .err()
        .expect("mixed checks");
        assert!(e.starts_with("line 6:"), "{e}");
        let e = haproxy(
            "frontend f
  bind :80
  default_backend b
backend b
  option httpchk GET /
  server s1 127.0.0.1:1 check check-ssl
",
        )
        .err()
        .expect("verified ssl without a CA");
        assert!(e.contains("verify none"), "{e}");
    }

    #[test]
    fn unknown_keywords_are_warnings_with_lines() {
        let i = haproxy(
            "global
  maxconn 100
frontend f
  bind :80
  option forwardfor
  default_backend b
backend b
  server s 127.0.0.1:1 maxconn 10
",
        )
        .expect("translates");
        assert!(
            i.warnings.iter().any(|w| w.starts_with("line 2:")),
            "{:?}",
            i.warnings
        );
        assert!(
            i.warnings.iter().any(|w| w.starts_with("line 5:")),
            "{:?}",
            i.warnings
        );
        assert!(
            i.warnings
                .iter()
                .any(|w| w.starts_with("line 8:") && w.contains("maxconn")),
            "{:?}",
            i.warnings
        );
        assert!(i.document.pools[0].check.is_none(), "no check: always UP");
    }
}
