//! Admin verbs as clients of `AdminService`: `apply`, `get`, `describe`,
//! `watch`, and `drain`/`maint`/`ready`. The client tries each
//! control-plane endpoint in turn until one answers. What `get`, `describe`
//! and `watch` show are the typed rows of `views`, printed by `output`.

use std::time::Duration;

use anyhow::{Context, anyhow};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use trackwire_core::PoolSpec;
use trackwire_core::convert::pool_to_pb;
use trackwire_core::time::now_ms;
use trackwire_proto::v1 as pb;
use trackwire_proto::v1::admin_service_client::AdminServiceClient;

use crate::Invalid;
use crate::args::{
    AdminTarget, ApplyArgs, DescribeArgs, GetArgs, GetWhat, Output, StateArgs, WatchArgs,
};

pub mod output;
pub mod views;

use output::{Row, cells, print_rows};
use views::{AgentRow, BackendDetail, BackendRow, EventRow, PoolRow, ProxyRow};

/// An admin client: the channel, and the bearer token on every call.
pub type Client = AdminServiceClient<InterceptedService<Channel, Bearer>>;

/// Adds `authorization: Bearer …` when a token file was given.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// Connects to the first endpoint that accepts a connection (TLS for
/// `https://` URLs with the `--tls-*` material).
pub async fn connect(target: &AdminTarget) -> anyhow::Result<Client> {
    let files = target.control_plane.tls.files().map_err(Invalid)?;
    let tls = match files {
        Some(f) => Some(
            trackwire_transport::Tls::load(f, trackwire_transport::Side::Client)
                .map_err(|e| Invalid(e.to_string()))?,
        ),
        None => None,
    };
    let bearer = match &target.token_file {
        Some(path) => {
            let token = trackwire_transport::Token::from_file(path).map_err(Invalid)?;
            Some(
                MetadataValue::try_from(format!("Bearer {}", token.expose())).map_err(|_| {
                    Invalid(format!("{}: not a valid header value", path.display()))
                })?,
            )
        }
        None => None,
    };
    let mut errors = Vec::new();
    for url in &target.control_plane.urls.0 {
        let endpoint = trackwire_connect::endpoint(url, tls.as_ref())
            .map_err(|e| Invalid(format!("--control-plane {e}")))?
            .timeout(Duration::from_secs(30));
        match endpoint.connect().await {
            Ok(ch) => {
                return Ok(AdminServiceClient::with_interceptor(ch, Bearer(bearer)));
            }
            Err(e) => errors.push(format!("{url}: {}", trackwire_connect::error_chain(&e))),
        }
    }
    Err(anyhow!(
        "no control-plane endpoint reachable: {}",
        errors.join("; ")
    ))
}

/// [`connect`] to plaintext `urls` without a token (tests, tools).
pub async fn connect_urls(urls: &[String]) -> anyhow::Result<Client> {
    connect(&AdminTarget {
        control_plane: crate::args::ControlPlane {
            urls: crate::args::Urls(urls.to_vec()),
            tls: crate::args::TlsArgs {
                tls_ca: None,
                tls_cert: None,
                tls_key: None,
            },
        },
        token_file: None,
    })
    .await
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
    let mut client = connect(&args.control_plane).await?;
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

/// Every stored pool (`ListPools`), checked as specs.
pub async fn stored_pools(client: &mut Client) -> anyhow::Result<Vec<PoolSpec>> {
    let resp = client
        .list_pools(pb::ListPoolsRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    resp.pools
        .iter()
        .enumerate()
        .map(|(i, p)| {
            PoolSpec::try_from(p)
                .with_context(|| format!("control plane sent an invalid pool (pools[{i}])"))
        })
        .collect()
}

pub async fn get(args: GetArgs, output: Output) -> anyhow::Result<()> {
    let mut client = connect(&args.control_plane).await?;
    match args.what {
        GetWhat::Pools => {
            let rows: Vec<PoolRow> = stored_pools(&mut client)
                .await?
                .iter()
                .map(PoolRow::new)
                .collect();
            print_rows(&rows, output, now_ms())
        }
        GetWhat::Proxies => {
            let resp = client
                .list_subscribers(pb::ListSubscribersRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            let rows: Vec<ProxyRow> = resp.subscribers.iter().map(ProxyRow::new).collect();
            print_rows(&rows, output, now_ms())
        }
        GetWhat::Agents => {
            let resp = client
                .list_agents(pb::ListAgentsRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            let rows: Vec<AgentRow> = resp.agents.iter().map(AgentRow::new).collect();
            print_rows(&rows, output, now_ms())
        }
        GetWhat::Backends => {
            let resp = client
                .get_health(pb::GetHealthRequest {
                    pool: String::new(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            print_rows(&BackendRow::all(&resp)?, output, now_ms())
        }
    }
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
    let mut client = connect(&args.control_plane).await?;
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

/// `describe backend POOL/NAME`.
pub async fn describe(args: DescribeArgs, output: Output) -> anyhow::Result<()> {
    let (pool, backend) = args
        .backend
        .split_once('/')
        .ok_or_else(|| Invalid(format!("{:?}: expected POOL/NAME", args.backend)))?;
    let mut client = connect(&args.control_plane).await?;
    let resp = client
        .get_health(pb::GetHealthRequest { pool: pool.into() })
        .await
        .map_err(status_error)?
        .into_inner();
    let detail = BackendDetail::find(&resp, pool, backend)?
        .ok_or_else(|| Invalid(format!("backend {pool}/{backend} does not exist")))?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&detail)?),
        Output::Table => print!("{}", detail.render(now_ms())),
    }
    Ok(())
}

/// `watch`: prints events until interrupted (or `--count` of them): one
/// JSON object per line, or a table whose header comes with the first
/// event (columns as wide as the header or the first event's cells: the
/// rows to come are not known).
pub async fn watch(args: WatchArgs, output: Output) -> anyhow::Result<()> {
    let mut client = connect(&args.control_plane).await?;
    let mut stream = client
        .watch_events(pb::WatchEventsRequest {
            pools: args.pools,
            from_revision: args.from_revision,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let mut seen = 0;
    let mut widths: Vec<usize> = Vec::new();
    let line = |cells: &[String], widths: &[usize]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    while let Some(e) = stream.message().await.map_err(status_error)? {
        let row = EventRow::new(e);
        match output {
            Output::Json => println!("{}", serde_json::to_string(&row)?),
            Output::Table => {
                let cells = cells(&row, now_ms());
                if widths.is_empty() {
                    let header: Vec<String> =
                        EventRow::COLUMNS.iter().map(|c| c.header.into()).collect();
                    widths = header
                        .iter()
                        .zip(&cells)
                        .map(|(h, c)| h.chars().count().max(c.chars().count()))
                        .collect();
                    println!("{}", line(&header, &widths));
                }
                println!("{}", line(&cells, &widths));
            }
        }
        seen += 1;
        if args.count != 0 && seen >= args.count {
            break;
        }
    }
    Ok(())
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
}
