//! The generated seeds (`trackwire_fuzz::seeds`) are committed as
//! `corpus/TARGET/seed-NAME`, so a change to the messages shows up here.
//! `FUZZ_WRITE_SEEDS=1 cargo nextest run -p trackwire-fuzz` rewrites them.

use std::path::Path;

#[test]
fn generated_seeds_are_committed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let write = std::env::var_os("FUZZ_WRITE_SEEDS").is_some();
    for s in trackwire_fuzz::seeds::all() {
        let path = root.join(s.target).join(format!("seed-{}", s.name));
        if write {
            if let Err(e) = std::fs::create_dir_all(root.join(s.target))
                .and_then(|()| std::fs::write(&path, &s.data))
            {
                panic!("{}: {e}", path.display());
            }
            continue;
        }
        match std::fs::read(&path) {
            Ok(d) => assert!(
                d == s.data,
                "{} differs from the generator (FUZZ_WRITE_SEEDS=1 rewrites it)",
                path.display()
            ),
            Err(e) => panic!(
                "{}: {e} (FUZZ_WRITE_SEEDS=1 writes the generated seeds)",
                path.display()
            ),
        }
    }
}

/// The protobuf seeds are requests the services accept, so fuzzing starts
/// past validation rather than at its first refusal.
#[test]
fn protobuf_seeds_pass_validation() {
    use prost::Message;
    use trackwire_control_plane::grpc::{admin, healthmap, probe};
    use trackwire_proto::v1 as pb;
    let seeds = trackwire_fuzz::seeds::all();
    let get = |target: &str, name: &str| -> Vec<u8> {
        match seeds.iter().find(|s| s.target == target && s.name == name) {
            Some(s) => s.data.clone(),
            None => panic!("no seed {target}/{name}"),
        }
    };
    let decoded = |bytes: &[u8]| match pb::AgentMessage::decode(bytes) {
        Ok(m) => m.msg,
        Err(e) => panic!("{e}"),
    };
    match decoded(&get("agent_message", "hello")) {
        Some(pb::agent_message::Msg::Hello(h)) => {
            assert!(probe::validate_hello(&h).is_ok());
        }
        other => panic!("{other:?}"),
    }
    match decoded(&get("agent_message", "report")) {
        Some(pb::agent_message::Msg::Report(r)) => {
            assert!(probe::validate_report(&r).is_ok());
        }
        other => panic!("{other:?}"),
    }
    let sub = pb::SubscribeRequest::decode(get("subscribe_request", "pools").as_slice());
    assert!(sub.is_ok_and(|r| healthmap::validate_subscribe(&r).is_ok()));
    let apply = get("admin_request", "apply");
    let req = pb::ApplyPoolsRequest::decode(&apply[1..]);
    assert!(req.is_ok_and(|r| admin::validate_pools(&r.pools).is_ok_and(|p| p.len() == 2)));
}
