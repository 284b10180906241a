//! `trackwire import haproxy FILE`: translates a HAProxy configuration into
//! a trackwire document (pools + listeners).
//!
//! Understood: `global`/`defaults`/`frontend`/`backend`/`listen`, `mode`,
//! `bind` (comma-separated addresses and port ranges: one listener each),
//! `default_backend`, `use_backend` without a condition, `balance`,
//! `default-server`, `server … check | track B/S | weight | backup | port |
//! addr | inter | fastinter | downinter | rise | fall | check-ssl |
//! check-sni | verify none | ca-file | send-proxy | send-proxy-v2 |
//! init-state`, `option httpchk` (with the old `\r\n`-separated headers in
//! its version word) and `http-check send meth|uri|ver|hdr`, `http-check
//! expect [!] status|string|rstring`, `timeout check|connect`. A `Host`
//! header becomes the check's `host`, other headers its `headers`.
//! `track` chains are resolved: a `mode tcp` backend whose servers track
//! servers of a `mode http` backend becomes one pool whose check is the
//! monitoring backend's, and the monitoring backend itself is not emitted
//! unless a frontend routes to it.
//!
//! Everything not translated is reported on stderr with its line number;
//! what cannot be translated faithfully (and what HAProxy itself refuses,
//! such as two backends of one name) is an error, and so is a configuration
//! in which no frontend routes to any backend. `parse` reads the sections
//! (with `words`, HAProxy's lexer); this module turns them into pools and
//! listeners.

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

mod parse;
mod server;
mod words;

use parse::Section;
use server::Server;

fn err(line: usize, msg: impl std::fmt::Display) -> String {
    format!("line {line}: {msg}")
}

fn dur(line: usize, v: &str) -> Result<Duration, String> {
    trackwire_core::duration::parse(v).map_err(|e| err(line, e))
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
    if let Some(chk) = httpchk {
        spec.method = chk.method;
        spec.path = chk.uri;
        spec.host = chk.host;
        spec.headers = chk.headers;
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
    let sections = parse::parse(text, &mut warnings)?;
    let defaults = sections.iter().rev().find(|s| s.kind == "defaults");
    let backends: BTreeMap<&str, &Section> = sections
        .iter()
        .filter(|s| s.is_backend())
        .map(|s| (s.name.as_str(), s))
        .collect();
    // Backends some frontend routes to (listen sections route to themselves).
    let mut routed: Vec<(&Section, &str)> = Vec::new();
    for s in sections.iter().filter(|s| s.is_frontend()) {
        let target = if s.kind == "listen" {
            Some(s.name.as_str())
        } else {
            s.default_backend
                .as_deref()
                .or_else(|| defaults.and_then(|d| d.default_backend.as_deref()))
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
        listeners.extend(listeners_of(front, be, defaults, &mut warnings)?);
    }
    let unrouted: Vec<String> = backends
        .iter()
        .filter(|(name, _)| !emitted.contains(name))
        .map(|(name, be)| format!("{name} (line {})", be.line))
        .collect();
    if pools.is_empty() {
        return Err(if unrouted.is_empty() {
            "nothing to translate: no frontend, backend or listen section".to_string()
        } else {
            format!(
                "nothing to translate: no frontend routes to backend {}",
                unrouted.join(", ")
            )
        });
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

/// The listeners of one frontend: one per bind address.
fn listeners_of(
    front: &Section,
    be: &Section,
    defaults: Option<&Section>,
    warnings: &mut Vec<String>,
) -> Result<Vec<ListenerSpec>, String> {
    if front.binds.is_empty() {
        warnings.push(err(
            front.line,
            format!(
                "{} {} has no bind: its pool is translated, no listener",
                front.kind, front.name
            ),
        ));
        return Ok(Vec::new());
    }
    let mode = |s: &Section| {
        s.mode
            .clone()
            .or_else(|| defaults.and_then(|d| d.mode.clone()))
    };
    if mode(front).as_deref() == Some("http") || mode(be).as_deref() == Some("http") {
        warnings.push(err(
            front.line,
            format!(
                "{} {} is mode http: the trackwire listener relays TCP and does no HTTP processing",
                front.kind, front.name
            ),
        ));
    }
    let balance_of = be
        .balance
        .as_ref()
        .or_else(|| defaults.and_then(|d| d.balance.as_ref()));
    // HAProxy's names are trackwire's (one parser: `Balance`'s), but for
    // static-rr, which is roundrobin with weights that never change.
    let balance = match balance_of {
        None => Balance::default(),
        Some((_, name)) if name == "static-rr" => Balance::RoundRobin,
        Some((line, name)) => name.parse().unwrap_or_else(|_| {
            warnings.push(err(
                *line,
                format!("balance {name} has no equivalent; using roundrobin"),
            ));
            Balance::RoundRobin
        }),
    };
    let proxies: Vec<Option<ProxyProtocol>> = be.servers.iter().map(|s| s.send_proxy).collect();
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
        .or_else(|| defaults.and_then(|d| d.timeout_connect));
    // One listener per address: named after the frontend, or after the
    // frontend and the port (or the position, when ports repeat).
    let ports: std::collections::HashSet<u16> = front.binds.iter().map(|(_, a)| a.port()).collect();
    let mut out = Vec::new();
    for (i, (line, bind)) in front.binds.iter().enumerate() {
        let name = match front.binds.len() {
            1 => front.name.clone(),
            n if ports.len() == n => format!("{}-{}", front.name, bind.port()),
            _ => format!("{}-{}", front.name, i + 1),
        };
        validate_name(&name).map_err(|e| err(*line, format!("listener name: {e}")))?;
        let defaults = ListenerSpec::new(&name, *bind, &be.name);
        out.push(ListenerSpec {
            balance,
            connect_timeout: connect.unwrap_or(defaults.connect_timeout),
            send_proxy: proxies.first().copied().flatten(),
            shutdown_sessions_on_down: shutdown.first().copied().unwrap_or(false),
            ..defaults
        });
    }
    Ok(out)
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
            zone: String::new(),
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
        grpc_xds: false,
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
    let toml = imported
        .document
        .to_toml()
        .map_err(|e| crate::Invalid(format!("{}: {e}", path.display())))?;
    print!("{toml}");
    Ok(())
}

#[cfg(test)]
mod tests;
