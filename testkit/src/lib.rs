//! Test support (a dev-dependency only; the product crates carry no test code):
//!
//! - [`etcd`]: real etcd servers (Debian's `etcd`) on free loopback ports.
//! - [`http`]: a scriptable HTTP/1.1 server for check tests (statuses, slow,
//!   reset mid-response, a 100 MiB body that counts what was actually sent).
//! - [`pki`]: a test CA and server certificates (valid, expired, other CA)
//!   made with rcgen, and a TLS wrapper for the HTTP test server.

pub mod etcd;
pub mod http;
pub mod pki;

pub use etcd::{EtcdCluster, EtcdMember};
