//! The fail-static cache: the last health map, persisted atomically (write a
//! temp file, fsync, rename) on every change and loaded at start, so a proxy
//! restarted while the control plane is unreachable routes as before. The
//! old and the new process of a zero-downtime restart may share the dir
//! (each writes its own temp file; the rename is atomic).
//!
//! The file is a `HealthMapUpdate` snapshot followed by the stale pools
//! (see [`crate::assemble`]) as field 1000, a number the proto does not use:
//! protobuf reads concatenated encodings as one message, so an older binary
//! skips the field as unknown and a file without it has no stale pools.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use prost::Message;
use trackwire_core::HealthMap;
use trackwire_core::convert::pool_update_to_pb;
use trackwire_proto::v1 as pb;

use crate::Error;

const FILE: &str = "healthmap.pb";

/// What the cache holds: the map and which of its pools are stale.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cached {
    pub map: HealthMap,
    pub stale: BTreeSet<String>,
}

/// The stale pools, encoded after the map (field 1000 of the same message).
#[derive(Clone, PartialEq, prost::Message)]
struct StalePools {
    #[prost(string, repeated, tag = "1000")]
    stale_pools: Vec<String>,
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

pub fn save(dir: &Path, map: &HealthMap, stale: &BTreeSet<String>) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let msg = pb::HealthMapUpdate {
        epoch: map.epoch,
        revision: map.revision,
        snapshot: true,
        pools: map.snapshot(&[]).iter().map(pool_update_to_pb).collect(),
        more: false,
    };
    let mut bytes = msg.encode_to_vec();
    StalePools {
        stale_pools: stale.iter().cloned().collect(),
    }
    .encode(&mut bytes)
    .map_err(std::io::Error::other)?;
    // Per process: the old and new proxy of a restart may share the dir.
    let tmp = dir.join(format!("{FILE}.{}.tmp", std::process::id()));
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path(dir))
}

/// `Ok(None)` when there is no cache yet; [`Error::Cache`] when it exists
/// but cannot be read.
pub fn load(dir: &Path) -> Result<Option<Cached>, Error> {
    let p = path(dir);
    let failed = |reason: String| Error::Cache {
        path: p.clone(),
        reason,
    };
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(failed(e.to_string())),
    };
    let msg = pb::HealthMapUpdate::decode(bytes.as_slice()).map_err(|e| failed(e.to_string()))?;
    let stale = StalePools::decode(bytes.as_slice())
        .map_err(|e| failed(e.to_string()))?
        .stale_pools
        .into_iter()
        .collect();
    let updates = msg
        .pools
        .iter()
        .map(trackwire_core::PoolUpdate::try_from)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| failed(e.to_string()))?;
    let mut map = HealthMap {
        epoch: msg.epoch,
        revision: msg.revision,
        ..HealthMap::default()
    };
    map.apply(&updates);
    Ok(Some(Cached { map, stale }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use trackwire_core::Endpoint;

    #[test]
    fn round_trips_and_reports_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(load(dir.path()).expect("no cache yet"), None);
        let mut pool = BTreeMap::new();
        pool.insert(
            "b".to_string(),
            Endpoint {
                decided_at_ms: 5,
                votes: 3,
                votes_up: 3,
                ..Endpoint::up("b", "127.0.0.1:1")
            },
        );
        let map = HealthMap {
            epoch: 7,
            revision: 42,
            pools: BTreeMap::from([("p".to_string(), Arc::new(pool))]),
        };
        let none = BTreeSet::new();
        save(dir.path(), &map, &none).expect("save");
        assert_eq!(
            load(dir.path()).expect("load"),
            Some(Cached {
                map: map.clone(),
                stale: none
            })
        );
        // Stale pools round-trip, and the file is still a HealthMapUpdate
        // an older binary reads (it skips the unknown field).
        let stale = BTreeSet::from(["p".to_string()]);
        save(dir.path(), &map, &stale).expect("save");
        assert_eq!(
            load(dir.path()).expect("load"),
            Some(Cached {
                map: map.clone(),
                stale
            })
        );
        let bytes = std::fs::read(path(dir.path())).expect("read");
        let plain = pb::HealthMapUpdate::decode(bytes.as_slice()).expect("plain decode");
        assert_eq!((plain.epoch, plain.revision, plain.pools.len()), (7, 42, 1));
        std::fs::write(path(dir.path()), b"\xff\xff garbage").expect("write");
        assert!(matches!(load(dir.path()), Err(Error::Cache { .. })));
    }
}
