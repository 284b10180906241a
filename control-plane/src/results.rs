//! The agents' latest check results (outcome, status, latency), as their
//! heartbeats summarise them. In memory on the replica holding the agent's
//! session, never in the store: results change with every check, facts only
//! with transitions. Shown by `GetHealth` and `trackwire describe`.

use parking_lot::{Mutex, MutexGuard};
use std::collections::HashMap;

use trackwire_proto::v1 as pb;

/// (agent, pool, backend)
type Key = (String, String, String);

#[derive(Debug, Default)]
pub struct Results {
    latest: Mutex<HashMap<Key, pb::ResultSummary>>,
}

impl Results {
    fn lock(&self) -> MutexGuard<'_, HashMap<Key, pb::ResultSummary>> {
        self.latest.lock()
    }

    pub fn update(&self, agent: &str, summaries: Vec<pb::ResultSummary>) {
        let mut m = self.lock();
        for s in summaries {
            m.insert((agent.to_string(), s.pool.clone(), s.backend.clone()), s);
        }
    }

    /// Drops an agent's results when its session ends (it reports them
    /// afresh to whichever replica it reconnects to).
    pub fn forget(&self, agent: &str) {
        self.lock().retain(|(a, _, _), _| a != agent);
    }

    pub fn get(&self, agent: &str, pool: &str, backend: &str) -> Option<pb::ResultSummary> {
        self.lock()
            .get(&(agent.to_string(), pool.to_string(), backend.to_string()))
            .cloned()
    }
}
