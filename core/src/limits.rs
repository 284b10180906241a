//! Every size limit trackwire enforces, in one place.
//!
//! Limits exist so that bad or hostile input is refused up front, by
//! validation, with an error naming the field — not later as a store error or
//! as unbounded memory in an agent. Validation (`PoolSpec::validate`,
//! `CheckSpec::validate`, `Document::validate`, the wire conversions) checks
//! these; the README's "Limits" section lists them for operators.
//!
//! | limit | value | why |
//! |---|---|---|
//! | [`MAX_POOLS`] | 1,000 | pools in one document or `ApplyPools` request |
//! | [`MAX_LISTENERS`] | 256 | listeners in one document |
//! | [`MAX_BACKENDS_PER_POOL`] | 10,000 | backends in one pool |
//! | [`MAX_POOL_SPEC_BYTES`] | 1 MiB | one pool, protobuf-encoded: it is one etcd value, and etcd refuses requests over 1.5 MiB |
//! | [`MAX_NAME_BYTES`] | 63 | pool, backend and listener names (they appear in store keys) |
//! | [`MAX_HOST_BYTES`] | 253 | the host of an address (a DNS name's limit) |
//! | [`MAX_HTTP_PATH_BYTES`] | 8 KiB | an HTTP check's request path |
//! | [`MAX_HTTP_METHOD_BYTES`] | 32 | an HTTP check's method |
//! | [`MAX_HEADERS`] | 32 | extra request headers of a check |
//! | [`MAX_HEADER_NAME_BYTES`] | 256 | one header name |
//! | [`MAX_HEADER_VALUE_BYTES`] | 4 KiB | one header value, and the check's `host` |
//! | [`MAX_MATCH_BYTES`] | 4 KiB | `expect_body`, `expect_body_regex`, `tcp_send`, `tcp_expect`, `grpc_service` |
//! | [`REGEX_SIZE_LIMIT`] | 1 MiB | compiled size of a body regex |
//! | [`MAX_FILE_PATH_BYTES`] | 4 KiB | TLS file paths (`PATH_MAX`) |
//! | [`MAX_BODY_BYTES`] | 64 KiB | response body a check reads and matches |
//! | [`MAX_VERDICTS_PER_HELLO`] | 10,000 | verdicts an agent may send in its session hello |

/// Pools in one document or one `ApplyPools` request.
pub const MAX_POOLS: usize = 1_000;

/// Listeners in one document.
pub const MAX_LISTENERS: usize = 256;

/// Backends in one pool.
pub const MAX_BACKENDS_PER_POOL: usize = 10_000;

/// Largest protobuf-encoded size of one pool spec. A pool is stored as one
/// etcd value and stock etcd refuses requests over 1.5 MiB
/// (`--max-request-bytes`); the margin leaves room for the value's envelope
/// and the rest of the transaction.
pub const MAX_POOL_SPEC_BYTES: usize = 1024 * 1024;

/// Pool, backend and listener names (they appear in store keys).
pub const MAX_NAME_BYTES: usize = 63;

/// The host part of a backend or check address: a DNS name is at most 253 bytes.
pub const MAX_HOST_BYTES: usize = 253;

/// An HTTP check's request path.
pub const MAX_HTTP_PATH_BYTES: usize = 8 * 1024;

/// An HTTP check's method.
pub const MAX_HTTP_METHOD_BYTES: usize = 32;

/// Extra request headers of one check.
pub const MAX_HEADERS: usize = 32;

/// One request header name.
pub const MAX_HEADER_NAME_BYTES: usize = 256;

/// One request header value, and the check's `host` (the Host header).
pub const MAX_HEADER_VALUE_BYTES: usize = 4 * 1024;

/// Body and TCP expectations, bytes sent by TCP checks, and gRPC service names.
pub const MAX_MATCH_BYTES: usize = 4 * 1024;

/// Compiled-size limit for body regexes: a pattern is data from the network
/// or a config file and must not make the agent allocate without bound.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// TLS file paths (`tls_ca_file`, `tls_client_cert`, `tls_client_key`), and
/// `tls_server_name`'s bound is [`MAX_HOST_BYTES`].
pub const MAX_FILE_PATH_BYTES: usize = 4 * 1024;

/// Largest number of bytes of a response body a check reads (HAProxy reads a bounded buffer too).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Verdicts an agent may report in the hello of one session (one per
/// assigned backend it holds an opinion on); the control plane refuses a
/// larger hello instead of writing an unbounded transaction.
pub const MAX_VERDICTS_PER_HELLO: usize = 10_000;

/// `n` bytes for an error message: `12 bytes`, `8 KiB`, `1.4 MiB`. Rounds
/// up, so a size just over a limit never reads as the limit itself.
pub fn format_bytes(n: usize) -> String {
    let tenths_up = |unit: usize| n.saturating_mul(10).div_ceil(unit);
    let show = |tenths: usize, unit: &str| {
        if tenths.is_multiple_of(10) {
            format!("{} {unit}", tenths / 10)
        } else {
            format!("{}.{} {unit}", tenths / 10, tenths % 10)
        }
    };
    if n >= 1024 * 1024 {
        show(tenths_up(1024 * 1024), "MiB")
    } else if n >= 1024 {
        show(tenths_up(1024), "KiB")
    } else {
        format!("{n} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_read_well() {
        assert_eq!(format_bytes(12), "12 bytes");
        assert_eq!(format_bytes(8 * 1024), "8 KiB");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(MAX_POOL_SPEC_BYTES), "1 MiB");
        assert_eq!(format_bytes(1_468_006), "1.4 MiB");
        assert_eq!(format_bytes(MAX_POOL_SPEC_BYTES + 1), "1.1 MiB");
    }
}

/// The limits of a gRPC port (the control plane's), as the server's flags
/// set them: validated here, applied by `trackwire-transport`'s accept loop
/// and the tonic server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Open connections on the port; at the cap, new ones wait in the backlog.
    pub max_connections: usize,
    /// Connections still in their TLS handshake or before their HTTP/2
    /// preface (each on a task of its own).
    pub max_pending_handshakes: usize,
    /// Deadline for a TLS handshake to complete.
    pub handshake_timeout: std::time::Duration,
    /// Deadline for the HTTP/2 client preface after accept (or handshake).
    pub preface_timeout: std::time::Duration,
    /// Largest gRPC message the server decodes or encodes.
    pub max_message_bytes: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// HTTP/2 keep-alive ping interval (a dead peer is dropped after one
    /// more interval without an answer).
    pub keepalive_interval: std::time::Duration,
    /// Verdict reports one agent session may send per second (a burst of
    /// ten seconds' worth is allowed); above it the session reads slower.
    pub agent_reports_per_second: u32,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 10_000,
            max_pending_handshakes: 256,
            handshake_timeout: std::time::Duration::from_secs(5),
            preface_timeout: std::time::Duration::from_secs(5),
            max_message_bytes: 16 * 1024 * 1024,
            max_concurrent_streams: 128,
            keepalive_interval: std::time::Duration::from_secs(10),
            agent_reports_per_second: 200,
        }
    }
}

impl ServerLimits {
    /// Each field in its range; the error names the flag.
    pub fn validate(&self) -> Result<(), String> {
        use std::time::Duration;
        let range = |flag: &str, v: usize, lo: usize, hi: usize| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(format!("{flag}: {v} is outside {lo}..={hi}"))
            }
        };
        let secs = |flag: &str, d: Duration, lo: Duration, hi: Duration| {
            if d >= lo && d <= hi {
                Ok(())
            } else {
                Err(format!("{flag}: {d:?} is outside {lo:?}..={hi:?}"))
            }
        };
        range("--max-connections", self.max_connections, 1, 1_000_000)?;
        range(
            "--max-pending-handshakes",
            self.max_pending_handshakes,
            1,
            100_000,
        )?;
        secs(
            "--handshake-timeout",
            self.handshake_timeout,
            Duration::from_millis(100),
            Duration::from_secs(60),
        )?;
        secs(
            "--preface-timeout",
            self.preface_timeout,
            Duration::from_millis(100),
            Duration::from_secs(60),
        )?;
        // The largest pool (1 MiB encoded) and a snapshot chunk must fit.
        range(
            "--max-message-bytes",
            self.max_message_bytes,
            4 * 1024 * 1024,
            256 * 1024 * 1024,
        )?;
        range(
            "--max-concurrent-streams",
            self.max_concurrent_streams as usize,
            1,
            10_000,
        )?;
        secs(
            "--keepalive-interval",
            self.keepalive_interval,
            Duration::from_secs(1),
            Duration::from_secs(3600),
        )?;
        range(
            "--agent-reports-per-second",
            self.agent_reports_per_second as usize,
            1,
            1_000_000,
        )
    }
}

/// The limits of an HTTP port (status page, `/metrics`, `/healthz`), so
/// that slow or idle clients cannot starve the health probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Open connections; at the cap, new ones wait in the backlog.
    pub max_connections: usize,
    /// Deadline for a request's headers, counted from when the connection
    /// is ready to read one: also the idle timeout between requests.
    pub header_read_timeout: std::time::Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 512,
            header_read_timeout: std::time::Duration::from_secs(5),
        }
    }
}
