//! The chaos suite on separate hosts: each scenario of
//! `cli/tests/chaos/fleet.py` builds a fleet of network namespaces (3 etcd
//! members, 2 control-plane replicas, 3 agents in two zones, 2 proxies, 3
//! backends, a client under steady load; mutual TLS on every trackwire
//! link), does its damage and checks DESIGN.md's promises: no failed client
//! connection, convergence within bounds. The figures are printed (see the
//! test output). Needs root and `ip` (iproute2), as CI has; every namespace
//! is deleted afterwards, also when the scenario fails (by the harness, and
//! again here).

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_trackwire");
const FLEET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/chaos/fleet.py");

/// Deletes every namespace of one run (`tw<tag>-*`) when dropped.
struct Namespaces(String);

impl Drop for Namespaces {
    fn drop(&mut self) {
        let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
            return;
        };
        let prefix = format!("tw{}-", self.0);
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(name) = line.split_whitespace().next()
                && name.starts_with(&prefix)
            {
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
    }
}

fn scenario(n: u32) {
    let tag = format!("{}{n}", std::process::id() % 100_000);
    let _cleanup = Namespaces(tag.clone());
    let out = Command::new("python3")
        .arg(FLEET)
        .args(["--bin", BIN, "--scenario", &n.to_string(), "--tag", &tag])
        .output()
        .expect("run python3 cli/tests/chaos/fleet.py");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(
        out.status.success(),
        "chaos scenario {n} failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("connections failed: 0"),
        "no failure count printed:\n{text}"
    );
}

#[test]
fn chaos_1_kill_a_control_plane_replica() {
    scenario(1);
}

#[test]
fn chaos_2_kill_an_etcd_follower_then_the_leader() {
    scenario(2);
}

#[test]
fn chaos_3_cut_an_agent_off_from_the_backends() {
    scenario(3);
}

#[test]
fn chaos_4_cut_a_proxy_off_from_the_control_plane_and_restart_it() {
    scenario(4);
}

#[test]
fn chaos_5_rolling_restart_of_both_proxies() {
    scenario(5);
}

#[test]
fn chaos_6_a_backend_fails_and_recovers() {
    scenario(6);
}

#[test]
fn chaos_7_partition_the_control_plane_from_etcd() {
    scenario(7);
}

#[test]
fn chaos_8_freeze_an_agent_past_its_lease_after_etcd_and_cp_kills() {
    scenario(8);
}
