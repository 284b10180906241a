//! `agent_message`: what a probe agent sends on `ProbeService.Connect`.
//! Anyone who can reach the control plane's port can open a session.

use prost::Message;
use trackwire_control_plane::grpc::probe::{heartbeat_results, validate_hello, validate_report};
use trackwire_control_plane::keys::{KeyKind, Keys};
use trackwire_core::limits::MAX_VERDICTS_PER_HELLO;
use trackwire_core::model::validate_name;
use trackwire_proto::v1 as pb;

/// Decodes one `AgentMessage` and validates it as the session does. What
/// passes must be safe to write: every verdict's key parses back to the
/// agent, pool and backend it was built from.
pub fn agent_message(data: &[u8]) {
    let Ok(m) = pb::AgentMessage::decode(data) else {
        return;
    };
    match m.msg {
        Some(pb::agent_message::Msg::Hello(hello)) if validate_hello(&hello).is_ok() => {
            assert!(hello.verdicts.len() <= MAX_VERDICTS_PER_HELLO);
            check_keys(&hello.agent_id, &hello.verdicts);
        }
        Some(pb::agent_message::Msg::Report(report)) if validate_report(&report).is_ok() => {
            check_keys("9b2f7c1e-3a44-4c1b-9a51-0d6c7e8f9a10", &report.verdicts);
        }
        Some(pb::agent_message::Msg::Heartbeat(h)) => {
            let kept = heartbeat_results(h.results, |pool, backend| {
                validate_name(pool).is_ok() && validate_name(backend).is_ok()
            });
            assert!(kept.len() <= MAX_VERDICTS_PER_HELLO);
            for r in &kept {
                assert!(r.outcome.len() <= 8 && r.reason.len() <= 256);
                assert!(validate_name(&r.pool).is_ok() && validate_name(&r.backend).is_ok());
            }
        }
        // Refused (the session ends with InvalidArgument) or empty.
        _ => {}
    }
}

fn check_keys(agent: &str, verdicts: &[pb::Verdict]) {
    let keys = match Keys::new("/trackwire/") {
        Ok(k) => k,
        Err(e) => panic!("the default prefix is refused: {e}"),
    };
    for v in verdicts {
        let key = keys.verdict(agent, &v.pool, &v.backend);
        match keys.parse(&key) {
            KeyKind::Verdict {
                agent: a,
                pool,
                backend,
            } => assert_eq!(
                (a, pool, backend),
                (agent, v.pool.as_str(), v.backend.as_str()),
                "{key}"
            ),
            _ => panic!("a valid verdict's key does not parse as one: {key}"),
        }
    }
}
