//! The transport's metrics, registered by whichever component uses it:
//! TLS material ([`register_tls`]: each certificate's expiry, reloads,
//! handshake failures) and a gRPC port's connections ([`register_listener`]).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{SystemTime, UNIX_EPOCH};

use trackwire_core::metrics::{Collector, DescriptorEncoder, Registry, counters, gauges};

use crate::Tls;
use crate::server::ListenerStats;

/// Registers the metrics of `tls` (read at each scrape, so reloads show).
pub fn register_tls(registry: &mut Registry, tls: &Tls) {
    registry.register_collector(Box::new(TlsCollector(tls.clone())));
}

/// Registers a gRPC port's connection counters.
pub fn register_listener(registry: &mut Registry, stats: &Arc<ListenerStats>) {
    registry.register_collector(Box::new(ListenerCollector(Arc::clone(stats))));
}

struct TlsCollector(Tls);

impl std::fmt::Debug for TlsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsCollector")
    }
}

impl Collector for TlsCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let tls = &self.0;
        let m = tls.current();
        let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let cert = tls.files().cert.display().to_string();
        let ca = tls.files().ca.display().to_string();
        gauges(
            &mut e,
            "trackwire_tls_certificate_not_after_seconds",
            "When each loaded certificate (own and CAs) expires, unix seconds.",
            std::iter::once(("leaf", &cert, &m.leaf))
                .chain(m.cas.iter().map(|v| ("ca", &ca, v)))
                .map(|(kind, file, v)| {
                    (
                        [
                            ("kind", kind),
                            ("file", file.as_str()),
                            ("serial", &v.serial),
                        ],
                        secs(v.not_after),
                    )
                }),
        )?;
        let s = tls.stats();
        counters(
            &mut e,
            "trackwire_tls_reloads",
            "TLS material reloads, by result.",
            [
                ([("result", "ok")], s.reloads.load(Relaxed)),
                ([("result", "error")], s.reload_errors.load(Relaxed)),
            ],
        )?;
        counters(
            &mut e,
            "trackwire_tls_handshake_failures",
            "TLS handshakes that failed or timed out.",
            [([] as [(&str, &str); 0], s.handshake_failures.load(Relaxed))],
        )
    }
}

#[derive(Debug)]
struct ListenerCollector(Arc<ListenerStats>);

impl Collector for ListenerCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let l = &self.0;
        let none: [(&str, &str); 0] = [];
        counters(
            &mut e,
            "trackwire_grpc_connections_accepted",
            "Connections accepted on the gRPC port.",
            [(none, l.accepted.load(Relaxed))],
        )?;
        gauges(
            &mut e,
            "trackwire_grpc_connections_active",
            "Established connections on the gRPC port.",
            [(none, l.active.load(Relaxed))],
        )?;
        counters(
            &mut e,
            "trackwire_grpc_connections_dropped",
            "Connections dropped before they were established, by reason (handshake: TLS handshake failed or timed out; preface: no HTTP/2 preface in time; evicted: made room for newer ones).",
            [
                (
                    [("reason", "handshake")],
                    l.handshake_failures.load(Relaxed),
                ),
                ([("reason", "preface")], l.preface_timeouts.load(Relaxed)),
                ([("reason", "evicted")], l.evicted.load(Relaxed)),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_counters_by_reason() {
        let stats = Arc::new(ListenerStats::default());
        stats.accepted.fetch_add(3, Relaxed);
        stats.preface_timeouts.fetch_add(1, Relaxed);
        let mut r = Registry::default();
        register_listener(&mut r, &stats);
        let (_, text) = trackwire_core::metrics::scrape(&r, None);
        assert!(
            text.contains("trackwire_grpc_connections_accepted_total 3\n"),
            "{text}"
        );
        assert!(
            text.contains("trackwire_grpc_connections_dropped_total{reason=\"preface\"} 1\n"),
            "{text}"
        );
    }
}
