//! The agent's session with the control plane: connect to any configured
//! endpoint (failing over with jittered backoff), send a hello carrying every
//! verdict held, apply assignments as they stream down, report verdict
//! transitions and heartbeat. Checks keep running while disconnected; what
//! changed meanwhile goes out in the next hello.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use trackwire_connect::Failover;
use trackwire_core::CheckSpec;
use trackwire_proto::v1 as pb;
use trackwire_proto::v1::probe_service_client::ProbeServiceClient;

use crate::runner::{Runner, Shared, TargetKey, TargetSpec};

pub struct SessionConfig {
    /// Control-plane URLs, tried in turn.
    pub control_plane: Vec<String>,
    pub agent_id: String,
    /// Random per process: tells the control plane this process from
    /// another one using the same agent id.
    pub instance_id: String,
    pub zone: String,
    pub heartbeat: Duration,
    pub tls: Option<trackwire_transport::Tls>,
}

pub async fn run(cfg: SessionConfig, shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut runner = Runner::new(Arc::clone(&shared));
    let mut failover = Failover::new(&cfg.control_plane);
    loop {
        let url = failover.next_url();
        let mut established = false;
        let outcome = tokio::select! {
            r = session(&url, &cfg, &shared, &mut runner, &mut established) => r,
            () = shutdown.cancelled() => break,
        };
        shared.metrics.connected.set(0);
        if let Err(e) = outcome {
            warn!(endpoint = %url, error = %e, "control-plane session ended");
        }
        if !failover.pause(established.into(), &shutdown).await {
            break;
        }
    }
    runner.stop_all();
}

async fn session(
    url: &str,
    cfg: &SessionConfig,
    shared: &Shared,
    runner: &mut Runner,
    established: &mut bool,
) -> Result<(), String> {
    let channel = trackwire_connect::channel(url, cfg.tls.as_ref()).await?;
    let (tx, rx) = mpsc::channel(64);
    let hello = pb::AgentHello {
        agent_id: cfg.agent_id.clone(),
        zone: cfg.zone.clone(),
        verdicts: shared.all_verdicts(),
        version: env!("CARGO_PKG_VERSION").into(),
        instance_id: cfg.instance_id.clone(),
    };
    let sent = hello.verdicts.len();
    tx.send(pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Hello(hello)),
    })
    .await
    .map_err(|e| e.to_string())?;
    let mut inbound = ProbeServiceClient::new(channel)
        .connect(ReceiverStream::new(rx))
        .await
        .map_err(|s| {
            if s.code() == tonic::Code::FailedPrecondition {
                // Loud: two processes share this agent id (a cloned state dir).
                tracing::error!(agent = %cfg.agent_id, message = s.message(), "the control plane refused this agent's session: another process holds this agent id");
            }
            format!("{}: {}", s.code(), s.message())
        })?
        .into_inner();
    info!(endpoint = %url, verdicts = sent, "connected to control plane");
    shared.metrics.connected.set(1);
    let mut heartbeat = tokio::time::interval(cfg.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    // Every 15th heartbeat (and the first) carries every result, not only changes.
    let mut beats: u64 = 0;
    loop {
        tokio::select! {
            msg = inbound.message() => match msg {
                Ok(Some(pb::ControlMessage { msg: Some(pb::control_message::Msg::Assignment(a)) })) => {
                    if first {
                        *established = true;
                        first = false;
                    }
                    runner.apply(targets(&a));
                }
                Ok(Some(_)) => {}
                Ok(None) => return Err("stream closed by the control plane".into()),
                Err(s) => return Err(format!("{}: {}", s.code(), s.message())),
            },
            () = shared.changed.notified() => {
                let verdicts = shared.take_pending();
                if !verdicts.is_empty() {
                    let m = pb::AgentMessage { msg: Some(pb::agent_message::Msg::Report(pb::VerdictReport { verdicts })) };
                    tx.send(m).await.map_err(|_| "stream closed".to_string())?;
                }
            }
            _ = heartbeat.tick() => {
                let results = shared.take_results(beats.is_multiple_of(15));
                beats += 1;
                let m = pb::AgentMessage { msg: Some(pb::agent_message::Msg::Heartbeat(pb::Heartbeat { sent_ms: trackwire_core::time::now_ms(), results })) };
                tx.send(m).await.map_err(|_| "stream closed".to_string())?;
            }
        }
    }
}

/// Converts an assignment, dropping (and logging) targets whose spec is invalid.
fn targets(a: &pb::Assignment) -> HashMap<TargetKey, TargetSpec> {
    let mut out = HashMap::new();
    for (i, t) in a.targets.iter().enumerate() {
        let check = match t.check.as_ref().map(CheckSpec::try_from) {
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                warn!(field = %e.within(&format!("targets[{i}].check")), "invalid check in assignment; skipped");
                continue;
            }
            None => {
                warn!(pool = %t.pool, backend = %t.backend, "assignment target without a check; skipped");
                continue;
            }
        };
        out.insert(
            (t.pool.clone(), t.backend.clone()),
            TargetSpec {
                address: t.address.clone(),
                check,
                fingerprint: t.fingerprint,
            },
        );
    }
    out
}
