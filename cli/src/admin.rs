//! Admin verbs: `apply` and `get`, as clients of `AdminService`. The client
//! tries each control-plane endpoint in turn until one answers.

use std::time::Duration;
use trackwire_core::time::now_ms;

use anyhow::{Context, anyhow};
use tonic::transport::{Channel, Endpoint};
use trackwire_core::convert::pool_to_pb;
use trackwire_core::{Endpoint as MapEndpoint, PoolSpec};
use trackwire_proto::v1 as pb;
use trackwire_proto::v1::admin_service_client::AdminServiceClient;

use crate::Invalid;
use crate::args::{ApplyArgs, DescribeArgs, GetArgs, GetWhat, Output, StateArgs, WatchArgs};

/// Connects to the first endpoint that accepts a connection.
pub async fn connect(urls: &[String]) -> anyhow::Result<AdminServiceClient<Channel>> {
    let mut errors = Vec::new();
    for url in urls {
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| Invalid(format!("--control-plane {url}: {e}")))?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(30));
        match endpoint.connect().await {
            Ok(ch) => return Ok(AdminServiceClient::new(ch)),
            Err(e) => errors.push(format!("{url}: {e}")),
        }
    }
    Err(anyhow!(
        "no control-plane endpoint reachable: {}",
        errors.join("; ")
    ))
}

/// Turns a gRPC status into an error with the right exit code.
pub fn status_error(s: tonic::Status) -> anyhow::Error {
    let msg = format!("{}: {}", s.code(), s.message());
    match s.code() {
        tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition | tonic::Code::NotFound => {
            Invalid(msg).into()
        }
        _ => anyhow!(msg),
    }
}

pub async fn apply(args: ApplyArgs) -> anyhow::Result<()> {
    let doc = crate::load_document(&args.file)?;
    if doc.pools.is_empty() {
        return Err(Invalid(format!("{}: no [[pool]] to apply", args.file.display())).into());
    }
    let mut client = connect(&args.control_plane.urls.0).await?;
    let resp = client
        .apply_pools(pb::ApplyPoolsRequest {
            pools: doc.pools.iter().map(pool_to_pb).collect(),
            expected_revision: args.expected_revision,
            dry_run: args.dry_run,
        })
        .await
        .map_err(|s| {
            if s.code() == tonic::Code::FailedPrecondition && args.expected_revision != 0 {
                Invalid(format!(
                    "--expected-revision {} is stale, nothing was written: {}; review the change (apply --dry-run) and apply again",
                    args.expected_revision,
                    s.message()
                ))
                .into()
            } else {
                status_error(s)
            }
        })?
        .into_inner();
    let (would, suffix) = if args.dry_run {
        ("would be ", " (dry run: nothing written)")
    } else {
        ("", "")
    };
    for (verb, names) in [
        ("created", &resp.created),
        ("updated", &resp.updated),
        ("unchanged", &resp.unchanged),
    ] {
        for n in names {
            println!("pool/{n} {would}{verb}");
            if args.dry_run && verb != "unchanged" {
                let new = doc.pools.iter().find(|p| &p.name == n);
                let old = if verb == "updated" {
                    let got = client
                        .get_pool(pb::GetPoolRequest { name: n.clone() })
                        .await
                        .map_err(status_error)?
                        .into_inner();
                    got.pool
                        .map(|p| PoolSpec::try_from(&p))
                        .transpose()
                        .context("invalid pool from the control plane")?
                } else {
                    None
                };
                print!("{}", diff(old.as_ref(), new)?);
            }
        }
    }
    println!("revision {}{suffix}", resp.revision);
    Ok(())
}

/// Line diff of two pools' TOML renderings (`-` only in the old, `+` only in the new).
fn diff(old: Option<&PoolSpec>, new: Option<&PoolSpec>) -> anyhow::Result<String> {
    let render = |p: Option<&PoolSpec>| -> anyhow::Result<String> {
        let Some(p) = p else {
            return Ok(String::new());
        };
        let doc = trackwire_core::config::Document {
            pools: vec![p.clone()],
            listeners: vec![],
        };
        doc.to_toml()
            .with_context(|| format!("showing pool {}", p.name))
    };
    let (o, n) = (render(old)?, render(new)?);
    let (ol, nl): (Vec<&str>, Vec<&str>) = (o.lines().collect(), n.lines().collect());
    // Longest common subsequence, so unchanged lines stay in place.
    let mut lcs = vec![vec![0usize; nl.len() + 1]; ol.len() + 1];
    for i in (0..ol.len()).rev() {
        for j in (0..nl.len()).rev() {
            lcs[i][j] = if ol[i] == nl[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut out = String::new();
    let (mut i, mut j) = (0, 0);
    while i < ol.len() || j < nl.len() {
        if i < ol.len() && j < nl.len() && ol[i] == nl[j] {
            i += 1;
            j += 1;
        } else if i < ol.len() && (j == nl.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push_str(&format!("  - {}\n", ol[i]));
            i += 1;
        } else {
            out.push_str(&format!("  + {}\n", nl[j]));
            j += 1;
        }
    }
    Ok(out)
}

fn print_rows(rows: &[Vec<String>], output: Output) -> anyhow::Result<()> {
    match output {
        Output::Table => print!("{}", table(rows)),
        Output::Json => {
            let header = &rows[0];
            let items: Vec<serde_json::Value> = rows[1..]
                .iter()
                .map(|r| {
                    serde_json::Value::Object(
                        header
                            .iter()
                            .zip(r)
                            .map(|(k, v)| (k.to_lowercase(), serde_json::Value::String(v.clone())))
                            .collect(),
                    )
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&items)?);
        }
    }
    Ok(())
}

pub async fn get(args: GetArgs, output: Output) -> anyhow::Result<()> {
    let mut client = connect(&args.control_plane.urls.0).await?;
    match args.what {
        GetWhat::Pools => {
            let resp = client
                .list_pools(pb::ListPoolsRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            let mut rows = vec![vec![
                "NAME".to_string(),
                "BACKENDS".into(),
                "CHECK".into(),
                "QUORUM".into(),
                "INITIAL".into(),
            ]];
            for p in &resp.pools {
                let spec = PoolSpec::try_from(p).context("control plane sent an invalid pool")?;
                let check = spec
                    .check
                    .as_ref()
                    .map(|c| match c.kind {
                        trackwire_core::CheckKind::Tcp => "tcp".to_string(),
                        k => format!(
                            "{} {} {} expect {}",
                            k.as_str(),
                            c.method,
                            c.path,
                            c.expect_status
                        ),
                    })
                    .unwrap_or_else(|| "none".into());
                rows.push(vec![
                    spec.name.clone(),
                    spec.backends.len().to_string(),
                    check,
                    spec.quorum.as_str().into(),
                    spec.initial_state.as_str().into(),
                ]);
            }
            print_rows(&rows, output)?;
        }
        GetWhat::Proxies => {
            let resp = client
                .list_subscribers(pb::ListSubscribersRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            let mut rows = vec![vec![
                "PROXY".to_string(),
                "PEER".into(),
                "POOLS".into(),
                "REVISION".into(),
                "LAG".into(),
                "MESSAGES".into(),
            ]];
            for p in &resp.subscribers {
                rows.push(vec![
                    p.proxy_id.clone(),
                    p.peer.clone(),
                    if p.pools.is_empty() {
                        "*".into()
                    } else {
                        p.pools.join(",")
                    },
                    p.last_revision_sent.to_string(),
                    p.lag_revisions.to_string(),
                    p.messages_sent.to_string(),
                ]);
            }
            print_rows(&rows, output)?;
        }
        GetWhat::Agents => {
            let resp = client
                .list_agents(pb::ListAgentsRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            let mut rows = vec![vec![
                "AGENT".to_string(),
                "ZONE".into(),
                "ADDRESS".into(),
                "CHECKS".into(),
                "SUSPECT".into(),
            ]];
            for a in &resp.agents {
                rows.push(vec![
                    a.agent_id.clone(),
                    a.zone.clone(),
                    a.address.clone(),
                    a.assigned.to_string(),
                    if a.suspect { "yes".into() } else { "no".into() },
                ]);
            }
            print_rows(&rows, output)?;
        }
        GetWhat::Backends => {
            let resp = client
                .get_health(pb::GetHealthRequest {
                    pool: String::new(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let mut rows = vec![vec![
                "POOL".to_string(),
                "BACKEND".into(),
                "ADDRESS".into(),
                "STATE".into(),
                "ADMIN".into(),
                "VOTES(UP/ALL)".into(),
                "REASON".into(),
            ]];
            for b in &resp.backends {
                let Some(e) = &b.endpoint else { continue };
                let e =
                    MapEndpoint::try_from(e).context("control plane sent an invalid endpoint")?;
                let reason = b
                    .votes
                    .iter()
                    .find(|v| !v.reason.is_empty())
                    .map(|v| v.reason.clone())
                    .unwrap_or_default();
                rows.push(vec![
                    b.pool.clone(),
                    e.backend.clone(),
                    e.address.clone(),
                    state_label(&e, b.stale_since_ms),
                    e.admin_state.as_str().into(),
                    format!("{}/{}", e.votes_up, e.votes),
                    reason,
                ]);
            }
            print_rows(&rows, output)?;
        }
    }
    Ok(())
}

/// `drain`, `maint`, `ready`: sets (or with `--clear`, removes) a backend's admin override.
pub async fn set_state(args: StateArgs, verb: &str) -> anyhow::Result<()> {
    let (pool, backend) = args
        .backend
        .split_once('/')
        .ok_or_else(|| Invalid(format!("{:?}: expected POOL/NAME", args.backend)))?;
    let state = match (args.clear, verb) {
        (true, _) => pb::AdminState::Unspecified,
        (false, "drain") => pb::AdminState::Drain,
        (false, "maint") => pb::AdminState::Maint,
        _ => pb::AdminState::Ready,
    };
    let set_by = std::env::var("USER").unwrap_or_else(|_| "trackwire-cli".into());
    let mut client = connect(&args.control_plane.urls.0).await?;
    let resp = client
        .set_backend_state(pb::SetBackendStateRequest {
            pool: pool.into(),
            backend: backend.into(),
            state: state as i32,
            reason: args.reason,
            set_by,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if args.clear {
        println!(
            "backend/{pool}/{backend} override cleared (revision {})",
            resp.revision
        );
    } else {
        println!(
            "backend/{pool}/{backend} {verb} (revision {})",
            resp.revision
        );
    }
    Ok(())
}

/// The STATE column: `UP`, or `UP (stale 4m2s)` for a state kept without
/// live verdicts.
fn state_label(e: &MapEndpoint, stale_since_ms: u64) -> String {
    let state = e.state.as_str().to_uppercase();
    match (e.stale, stale_since_ms) {
        (false, _) => state,
        (true, 0) => format!("{state} (stale)"),
        (true, since) => format!(
            "{state} (stale {})",
            human_age(now_ms().saturating_sub(since))
        ),
    }
}

/// `4m2s`, `3h0m`, `12s`.
fn human_age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

/// `describe backend POOL/NAME`.
pub async fn describe(args: DescribeArgs, output: Output) -> anyhow::Result<()> {
    let (pool, backend) = args
        .backend
        .split_once('/')
        .ok_or_else(|| Invalid(format!("{:?}: expected POOL/NAME", args.backend)))?;
    let mut client = connect(&args.control_plane.urls.0).await?;
    let resp = client
        .get_health(pb::GetHealthRequest { pool: pool.into() })
        .await
        .map_err(status_error)?
        .into_inner();
    let b = resp
        .backends
        .iter()
        .find(|b| b.endpoint.as_ref().is_some_and(|e| e.backend == backend))
        .ok_or_else(|| Invalid(format!("backend {pool}/{backend} does not exist")))?;
    let e = MapEndpoint::try_from(b.endpoint.as_ref().context("no endpoint")?)
        .context("control plane sent an invalid endpoint")?;
    let votes: Vec<Vec<String>> = b
        .votes
        .iter()
        .map(|v| {
            vec![
                v.agent_id.clone(),
                trackwire_core::convert::health_from_pb(v.state, "state")
                    .map(|s| s.as_str().to_uppercase())
                    .unwrap_or_default(),
                v.reason.clone(),
                v.since_ms.to_string(),
                if v.suspect {
                    "suspect (not counted)".into()
                } else {
                    String::new()
                },
            ]
        })
        .collect();
    if output == Output::Json {
        let json = serde_json::json!({
            "pool": pool,
            "backend": e.backend,
            "address": e.address,
            "state": e.state.as_str(),
            "admin_state": e.admin_state.as_str(),
            "weight": e.weight,
            "backup": e.backup,
            "decided_at_ms": e.decided_at_ms,
            "stale": e.stale,
            "stale_since_ms": b.stale_since_ms,
            "stale_expires_ms": b.stale_expires_ms,
            "votes": e.votes,
            "votes_up": e.votes_up,
            "assigned_agents": b.assigned_agents,
            "agent_votes": votes.iter().map(|v| serde_json::json!({
                "agent": v[0], "state": v[1], "reason": v[2], "since_ms": v[3], "note": v[4], "last_result": v[5],
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    println!("Backend:      {pool}/{}", e.backend);
    println!("Address:      {}", e.address);
    println!(
        "State:        {} ({} of {} counted votes UP)",
        e.state.as_str().to_uppercase(),
        e.votes_up,
        e.votes
    );
    if e.stale {
        println!(
            "Stale:        yes: no live verdict; the last decided state, kept {}{}",
            if b.stale_since_ms > 0 {
                format!(
                    "for {}",
                    human_age(now_ms().saturating_sub(b.stale_since_ms))
                )
            } else {
                "(age unknown)".into()
            },
            if b.stale_expires_ms > 0 {
                format!(
                    "; the pool's initial state applies in {}",
                    human_age(b.stale_expires_ms.saturating_sub(now_ms()))
                )
            } else {
                "; trusted without bound".into()
            }
        );
    }
    println!("Admin state:  {}", e.admin_state.as_str());
    println!(
        "Weight:       {}{}",
        e.weight,
        if e.backup { " (backup)" } else { "" }
    );
    println!(
        "Decided at:   {} (unix ms; 0 = initial state)",
        e.decided_at_ms
    );
    println!("Checked by:   {}", b.assigned_agents.join(", "));
    let mut rows = vec![vec![
        "AGENT".to_string(),
        "VERDICT".into(),
        "REASON".into(),
        "SINCE_MS".into(),
        "NOTE".into(),
        "LAST CHECK".into(),
    ]];
    rows.extend(votes);
    print!("{}", table(&rows));
    Ok(())
}

/// `watch`: prints events until interrupted (or `--count` of them).
pub async fn watch(args: WatchArgs, output: Output) -> anyhow::Result<()> {
    let mut client = connect(&args.control_plane.urls.0).await?;
    let mut stream = client
        .watch_events(pb::WatchEventsRequest {
            pools: args.pools,
            from_revision: args.from_revision,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let mut seen = 0;
    while let Some(e) = stream.message().await.map_err(status_error)? {
        match output {
            Output::Json => println!(
                "{}",
                serde_json::json!({
                    "revision": e.revision, "pool": e.pool, "backend": e.backend, "kind": e.kind,
                    "from": e.from, "to": e.to, "reason": e.reason, "at_ms": e.at_ms,
                })
            ),
            Output::Table => println!(
                "rev {:<8} {}/{} {} {} -> {} {}",
                e.revision, e.pool, e.backend, e.kind, e.from, e.to, e.reason
            ),
        }
        seen += 1;
        if args.count != 0 && seen >= args.count {
            break;
        }
    }
    Ok(())
}

/// Left-aligned columns separated by two spaces.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{s:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn dry_run_diff_marks_changed_lines() {
        let doc = trackwire_core::config::Document::parse(
            "[[pool]]\nname = \"p\"\n[[pool.backend]]\nname = \"b\"\naddress = \"h:1\"\n",
        )
        .expect("valid");
        let old = doc.pools[0].clone();
        let mut new = old.clone();
        new.backends[0].weight = 7;
        let d = super::diff(Some(&old), Some(&new)).expect("renders");
        assert_eq!(d, "  - weight = 1\n  + weight = 7\n");
        assert!(
            super::diff(None, Some(&new))
                .expect("renders")
                .lines()
                .all(|l| l.starts_with("  + "))
        );
    }

    #[test]
    fn table_aligns_columns() {
        let t = super::table(&[
            vec!["A".into(), "BB".into()],
            vec!["long".into(), "x".into()],
        ]);
        assert_eq!(t, "A     BB\nlong  x\n");
    }
}
