//! `server` and `default-server` options.

use std::time::Duration;

use trackwire_core::config::ProxyProtocol;

use super::{dur, err};

#[derive(Debug, Clone, Default)]
pub struct Server {
    pub line: usize,
    pub name: String,
    pub address: String,
    pub check: bool,
    pub track: Option<(String, String)>,
    pub weight: Option<u32>,
    pub backup: bool,
    pub port: Option<u16>,
    pub addr: Option<String>,
    pub inter: Option<Duration>,
    pub fastinter: Option<Duration>,
    pub downinter: Option<Duration>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
    pub check_ssl: bool,
    pub check_sni: Option<String>,
    pub verify_none: bool,
    pub ca_file: Option<String>,
    pub send_proxy: Option<ProxyProtocol>,
    pub init_down: Option<bool>,
    pub disabled: bool,
    pub shutdown_sessions: bool,
}

fn num<T: std::str::FromStr>(line: usize, what: &str, v: Option<&str>) -> Result<T, String> {
    v.and_then(|v| v.parse().ok())
        .ok_or_else(|| err(line, format!("{what} needs a number")))
}

/// Applies `server` / `default-server` options to `s`.
pub fn server_opts(
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
