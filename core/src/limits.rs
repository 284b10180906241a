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
