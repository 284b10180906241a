//! Events for `AdminService.WatchEvents`: what changed between two maps
//! (state transitions, admin-state changes with the operator's reason,
//! backends added or removed). Pure: the stream task feeds it successive
//! snapshots.

use std::collections::BTreeMap;
use std::sync::Arc;

use trackwire_core::HealthMap;
use trackwire_core::map::wants;
use trackwire_proto::v1 as pb;

use crate::facts::AdminOverride;

type Overrides = Arc<BTreeMap<(String, String), AdminOverride>>;

pub fn between(
    old: &HealthMap,
    new: &HealthMap,
    new_admin: &Overrides,
    pools: &[String],
) -> Vec<pb::Event> {
    let mut out = Vec::new();
    let event = |pool: &str,
                 backend: &str,
                 kind: &str,
                 from: String,
                 to: String,
                 reason: String,
                 at_ms: u64| pb::Event {
        revision: new.revision,
        pool: pool.to_string(),
        backend: backend.to_string(),
        kind: kind.to_string(),
        from,
        to,
        reason,
        at_ms,
    };
    for (name, pool) in &new.pools {
        if !wants(pools, name) {
            continue;
        }
        let before = old.pools.get(name);
        if before.is_some_and(|b| Arc::ptr_eq(b, pool)) {
            continue;
        }
        for (b, e) in pool.iter() {
            match before.and_then(|p| p.get(b)) {
                None => out.push(event(
                    name,
                    b,
                    "added",
                    String::new(),
                    e.state.to_string(),
                    String::new(),
                    e.decided_at_ms,
                )),
                Some(o) => {
                    if o.admin_state != e.admin_state {
                        let ov = new_admin.get(&(name.clone(), b.clone()));
                        let reason = ov
                            .map(|o| format!("{} (by {})", o.reason, o.set_by))
                            .unwrap_or_else(|| "pool spec".to_string());
                        let at = ov.map(|o| o.at_ms).unwrap_or(0);
                        out.push(event(
                            name,
                            b,
                            "admin",
                            o.admin_state.as_str().into(),
                            e.admin_state.as_str().into(),
                            reason,
                            at,
                        ));
                    }
                    if o.state != e.state {
                        let reason = if e.admin_state == trackwire_core::AdminState::Maint {
                            "admin maint".to_string()
                        } else {
                            format!("{}/{} agents say UP", e.votes_up, e.votes)
                        };
                        out.push(event(
                            name,
                            b,
                            "state",
                            o.state.to_string(),
                            e.state.to_string(),
                            reason,
                            e.decided_at_ms,
                        ));
                    }
                }
            }
        }
        if let Some(before) = before {
            for b in before.keys().filter(|b| !pool.contains_key(*b)) {
                out.push(event(
                    name,
                    b,
                    "removed",
                    String::new(),
                    String::new(),
                    String::new(),
                    0,
                ));
            }
        }
    }
    for (name, pool) in &old.pools {
        if wants(pools, name) && !new.pools.contains_key(name) {
            for b in pool.keys() {
                out.push(event(
                    name,
                    b,
                    "removed",
                    String::new(),
                    String::new(),
                    "pool deleted".into(),
                    0,
                ));
            }
        }
    }
    out
}
