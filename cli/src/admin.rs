//! Admin verbs: `apply` and `get`, as clients of `AdminService`. The client
//! tries each control-plane endpoint in turn until one answers.

use std::time::Duration;

use anyhow::{Context, anyhow};
use tonic::transport::{Channel, Endpoint};
use trackwire_core::convert::pool_to_pb;
use trackwire_core::{Endpoint as MapEndpoint, PoolSpec};
use trackwire_proto::v1 as pb;
use trackwire_proto::v1::admin_service_client::AdminServiceClient;

use crate::Invalid;
use crate::args::{ApplyArgs, GetArgs, GetWhat, StateArgs};

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
    let mut client = connect(&args.control_plane.0).await?;
    let resp = client
        .apply_pools(pb::ApplyPoolsRequest {
            pools: doc.pools.iter().map(pool_to_pb).collect(),
            expected_revision: 0,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    for (verb, names) in [
        ("created", &resp.created),
        ("updated", &resp.updated),
        ("unchanged", &resp.unchanged),
    ] {
        for n in names {
            println!("pool/{n} {verb}");
        }
    }
    println!("revision {}", resp.revision);
    Ok(())
}

pub async fn get(args: GetArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.control_plane.0).await?;
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
            print!("{}", table(&rows));
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
            print!("{}", table(&rows));
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
                    e.state.as_str().to_uppercase(),
                    e.admin_state.as_str().into(),
                    format!("{}/{}", e.votes_up, e.votes),
                    reason,
                ]);
            }
            print!("{}", table(&rows));
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
    let mut client = connect(&args.control_plane.0).await?;
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
    fn table_aligns_columns() {
        let t = super::table(&[
            vec!["A".into(), "BB".into()],
            vec!["long".into(), "x".into()],
        ]);
        assert_eq!(t, "A     BB\nlong  x\n");
    }
}
