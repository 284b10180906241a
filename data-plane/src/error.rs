//! The data plane's one error type: what configuration, binding, listening,
//! the HTTP port and the fail-static cache report.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid config: {0}")]
    Config(String),
    /// The state dir exists but cannot hold the cache.
    #[error("state dir {}: {reason}", path.display())]
    StateDir { path: PathBuf, reason: String },
    /// The cache file exists but cannot be read or decoded.
    #[error("{}: {reason}", path.display())]
    Cache { path: PathBuf, reason: String },
    // The io errors below are part of the message, not `source`s: callers
    // printing the chain (anyhow's `{:#}`) would show them twice.
    #[error("listener {listener:?}: bind {addr}: {error}")]
    Bind {
        listener: String,
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("listener {listener:?}: listen on {addr}: {error}")]
    Listen {
        listener: String,
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("http server: {0}")]
    Http(std::io::Error),
    #[error("worker thread: {0}")]
    Worker(std::io::Error),
}
