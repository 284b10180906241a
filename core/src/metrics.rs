//! What every component's `/metrics` shares: one `prometheus-client`
//! [`Registry`] per component (a process in production; `trackwire dev`
//! runs three components, each with its own port and registry), encoded by
//! that crate in the format the scraper asks for ([`scrape`]), and helpers
//! for collectors that read their values at scrape time.
//!
//! Each crate registers its own metrics in its own `metrics` module.
//! Counters and gauges are `prometheus-client`'s (one atomic each);
//! latencies use the lock-free [`crate::histogram::Histogram`]; series
//! whose label sets follow the health map (pools, backends, agents,
//! proxies) come from a [`Collector`] walking the current state on each
//! scrape, so a deleted backend's series disappear with it. Labels are
//! bounded by the fleet's configuration: never a client address, a peer
//! port or a connection.

pub use prometheus_client;
pub use prometheus_client::collector::Collector;
pub use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
pub use prometheus_client::metrics::MetricType;
pub use prometheus_client::registry::Registry;

use prometheus_client::encoding::{EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet};

/// OpenMetrics, what Prometheus asks for first.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic text format (0.0.4): curl, `promtool check metrics`.
pub const TEXT: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Encodes `registry` for a scrape whose `Accept` header is `accept`:
/// OpenMetrics when the scraper accepts it (Prometheus does), else the
/// classic text format. Returns the content type and the body.
pub fn scrape(registry: &Registry, accept: Option<&str>) -> (&'static str, String) {
    let mut body = String::new();
    let open = accept.is_some_and(|a| a.contains("application/openmetrics-text"));
    // Writing to a String cannot fail; a collector's error leaves what was
    // encoded before it.
    if open {
        let _ = prometheus_client::encoding::text::encode(&mut body, registry);
        (OPENMETRICS, body)
    } else {
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut body, registry);
        (TEXT, body)
    }
}

/// Encodes one gauge family from `(labels, value)` rows.
pub fn gauges<L: EncodeLabelSet, V: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, V)>,
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        family.encode_family(&labels)?.encode_gauge(&v)?;
    }
    Ok(())
}

/// Encodes one counter family from `(labels, value)` rows; `name` without
/// `_total` (the encoder adds it).
pub fn counters<L: EncodeLabelSet, V: EncodeCounterValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, V)>,
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        family
            .encode_family(&labels)?
            .encode_counter::<prometheus_client::encoding::NoLabelSet, _, f64>(&v, None)?;
    }
    Ok(())
}

/// Encodes one histogram family from `(labels, histogram)` rows.
pub fn histograms<'h, L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, &'h crate::histogram::Histogram)>,
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, h) in rows {
        h.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Seconds between `ms` (unix milliseconds) and `now_ms`, 0 when `ms` is
/// later (clock skew).
pub fn age_seconds(ms: u64, now_ms: u64) -> f64 {
    now_ms.saturating_sub(ms) as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[derive(Debug)]
    struct Rows;

    impl Collector for Rows {
        fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
            gauges(
                &mut e,
                "t_state",
                "a state",
                [([("pool", "a\"b")], 1u64), ([("pool", "c")], 0)],
            )?;
            counters(&mut e, "t_events", "events", [([("pool", "c")], 3u64)])
        }
    }

    #[test]
    fn classic_text_unless_openmetrics_is_accepted() {
        let mut r = Registry::default();
        let c: Counter = Counter::default();
        c.inc_by(2);
        r.register("t_calls", "calls made", c);
        r.register_collector(Box::new(Rows));
        let (ct, text) = scrape(&r, Some("text/plain"));
        assert_eq!(ct, TEXT);
        assert!(
            text.contains("# TYPE t_calls_total counter\nt_calls_total 2\n"),
            "{text}"
        );
        assert!(text.contains("t_state{pool=\"a\\\"b\"} 1\n"), "{text}");
        assert!(text.contains("t_events_total{pool=\"c\"} 3\n"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
        let (ct, open) = scrape(
            &r,
            Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
        );
        assert_eq!(ct, OPENMETRICS);
        assert!(
            open.contains("# TYPE t_calls counter\nt_calls_total 2\n"),
            "{open}"
        );
        assert!(open.ends_with("# EOF\n"), "{open}");
    }
}
