//! trackwire's links, secured and hardened.
//!
//! - [`identity`]: the identities, `spiffe://<trust-domain>/trackwire/<role>/<name>`,
//!   and the rules a certificate must meet.
//! - [`material`]: CA bundle, certificate and key → checked rustls configs;
//!   [`Tls`] reloads them without downtime (mtime poll and SIGHUP) and
//!   exports their expiry.
//! - [`metrics`]: TLS and gRPC-port metrics, registered by the component.
//! - [`server`]: the gRPC port's accept loop (connection and handshake caps,
//!   handshake and HTTP/2 preface deadlines), yielding connections that carry
//!   a [`Peer`].
//! - [`auth`]: the role table's tower layer and the admin bearer token.
//! - [`client`]: the TLS connector clients of the control plane use.
//! - [`http`]: serving an HTTP port with a connection cap and header deadlines.
//! - [`pki`]: `trackwire certs init|issue` (rcgen).
//!
//! A crate of its own because the control plane serves with it while the
//! agent, the proxy and the CLI call with it; `trackwire-core` stays free of
//! IO and TLS.

pub mod auth;
pub mod client;
pub mod http;
pub mod identity;
pub mod material;
pub mod metrics;
pub mod pki;
pub mod server;
pub mod slots;

pub use auth::{Access, Allow, AuthLayer, Caller, Token};
pub use identity::{Identity, Role};
pub use material::{Side, Tls, TlsFiles};
pub use server::{ListenerStats, Peer};
