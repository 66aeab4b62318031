//! `/metrics` of a node's ops endpoint and of HQ, written by the Prometheus project's own client
//! (`prometheus-client`): its encoder owns the `# HELP`/`# TYPE` lines, label escaping and number formats.
//!
//! Both services read their figures where they are kept (atomics, the mesh actor, route stats, a watch
//! channel, the disk) when scraped. So each scrape fills a fresh registry with constant metrics: mirroring
//! every figure into long-lived `Counter`s would be a second copy to keep in step with the first, and a
//! `Collector` is synchronous, so it would need the same figures gathered beforehand, only behind a trait.
//! A registry of a few dozen metrics every scrape interval costs nothing worth saving.
//!
//! Callers name every metric exactly as it is scraped (`lpmesh_camera_frames_total`), so the names
//! dashboards query can be found here as they are; `Exposition::add` takes off what the client adds.

use std::fmt::Debug;

use prometheus_client::encoding::{EncodeGaugeValue, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Metric, Registry, Unit};

/// The Prometheus text format (version 0.0.4), what both endpoints have always served and every
/// Prometheus reads. OpenMetrics text would do for Prometheus too, but it names a counter's family
/// without `_total` on its `# HELP` and `# TYPE` lines and ends with `# EOF`: the 0.0.4 text keeps every
/// series' name, labels and `# TYPE` line what they were, for every reader of it and not only
/// Prometheus. What changed with the client: the content type now names its charset, and a float
/// gauge prints as the client writes floats (`2.0`, not `2`).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// A label set: `[("camera", name)]`, printed in its order. Values are escaped by the encoder.
pub trait Labels: EncodeLabelSet + Debug + Send + Sync + 'static {}
impl<T: EncodeLabelSet + Debug + Send + Sync + 'static> Labels for T {}

/// A gauge's value: an integer or a float.
pub trait GaugeValue: EncodeGaugeValue + Debug + Send + Sync + 'static {}
impl<T: EncodeGaugeValue + Debug + Send + Sync + 'static> GaugeValue for T {}

/// A histogram as it stands: observations at most each upper bound (cumulative, as Prometheus shows
/// them), all of them, and their sum.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramValue {
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum: f64,
}

impl TypedMetric for HistogramValue {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for HistogramValue {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // The encoder sums the buckets it is given itself: hand it each bucket's own share.
        let mut below = 0;
        let own: Vec<(f64, u64)> = self
            .buckets
            .iter()
            .map(|&(le, n)| {
                let share = n.saturating_sub(below);
                below = below.max(n);
                (le, share)
            })
            .collect();
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, &own, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// One metric's series, each with its labels. (The client's `Family` creates its members on first
/// use and keeps them in a hash map: for values known at once, a list keeps them in the order given.)
#[derive(Debug)]
struct Series<L, M>(Vec<(L, M)>);

impl<L: Labels, M: EncodeMetric + TypedMetric> EncodeMetric for Series<L, M> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, metric) in &self.0 {
            metric.encode(encoder.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        M::TYPE
    }
}

/// The metrics of one scrape, in the order they are added.
#[derive(Debug, Default)]
pub struct Exposition {
    registry: Registry,
}

impl Exposition {
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.add(name, help, ConstCounter::new(value));
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: impl GaugeValue) {
        self.add(name, help, ConstGauge::new(value));
    }

    /// A counter with labels; no series still prints its help and type.
    pub fn counters<L: Labels>(&mut self, name: &str, help: &str, series: impl IntoIterator<Item = (L, u64)>) {
        let series = series.into_iter().map(|(l, v)| (l, ConstCounter::new(v)));
        self.add(name, help, Series(series.collect()));
    }

    pub fn gauges<L: Labels, N: GaugeValue>(
        &mut self,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (L, N)>,
    ) {
        let series = series.into_iter().map(|(l, v)| (l, ConstGauge::new(v)));
        self.add(name, help, Series(series.collect()));
    }

    pub fn histograms<L: Labels>(
        &mut self,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (L, HistogramValue)>,
    ) {
        self.add(name, help, Series(series.into_iter().collect()));
    }

    /// The Prometheus text of everything added ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// Registers `metric` so that it is scraped as `name`: the client appends a counter's `_total`, a
    /// unit it was given and a full stop to the help itself, so they are taken off first. (Giving it the
    /// unit costs nothing here and makes the OpenMetrics form right, should it ever be served.)
    fn add(&mut self, name: &str, help: &str, metric: impl Metric) {
        let name = if metric.metric_type() == MetricType::Counter {
            // A counter named without it would be scraped under another name than the one written.
            debug_assert!(name.ends_with("_total"), "counter {name} must end with _total");
            name.strip_suffix("_total").unwrap_or(name)
        } else {
            name
        };
        let help = help.strip_suffix('.').unwrap_or(help);
        let unit = [("_seconds", Unit::Seconds), ("_bytes", Unit::Bytes)]
            .into_iter()
            .find_map(|(suffix, unit)| Some((name.strip_suffix(suffix)?, unit)));
        match unit {
            Some((base, unit)) => self.registry.register_with_unit(base, help, unit, metric),
            None => self.registry.register(name, help, metric),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_help_labels_and_values_are_printed_as_scraped() {
        let mut x = Exposition::default();
        x.counter("demo_frames_total", "Frames analysed.", 7);
        x.counters(
            "demo_events_total",
            "Events by camera.",
            [([("camera", "back \"dock\" \\2\nx".to_string())], 3)],
        );
        x.counters(
            "demo_empty_total",
            "Nothing yet.",
            Vec::<([(&str, String); 1], u64)>::new(),
        );
        x.gauge("demo_disk_free_bytes", "Free bytes.", 1u64 << 40);
        x.gauge("demo_age_seconds", "Age.", 1.5);
        x.gauge("demo_whole_seconds", "Age.", 2.0);
        x.gauges(
            "demo_queued",
            "Queued, 100 % of them.",
            [([("route", "a"), ("type", "mqtt")], 0u64)],
        );
        x.histograms(
            "demo_inference_seconds",
            "Detector time per frame.",
            [(
                [("camera", "plaza")],
                HistogramValue {
                    buckets: vec![(0.002, 1), (0.01, 3), (1.0, 3)],
                    count: 4,
                    sum: 1.5,
                },
            )],
        );
        let text = x.encode().unwrap();
        assert_eq!(
            text,
            "# HELP demo_frames_total Frames analysed.\n\
             # TYPE demo_frames_total counter\n\
             demo_frames_total 7\n\
             # HELP demo_events_total Events by camera.\n\
             # TYPE demo_events_total counter\n\
             demo_events_total{camera=\"back \\\"dock\\\" \\\\2\\nx\"} 3\n\
             # HELP demo_empty_total Nothing yet.\n\
             # TYPE demo_empty_total counter\n\
             # HELP demo_disk_free_bytes Free bytes.\n\
             # TYPE demo_disk_free_bytes gauge\n\
             demo_disk_free_bytes 1099511627776\n\
             # HELP demo_age_seconds Age.\n\
             # TYPE demo_age_seconds gauge\n\
             demo_age_seconds 1.5\n\
             # HELP demo_whole_seconds Age.\n\
             # TYPE demo_whole_seconds gauge\n\
             demo_whole_seconds 2.0\n\
             # HELP demo_queued Queued, 100 % of them.\n\
             # TYPE demo_queued gauge\n\
             demo_queued{route=\"a\",type=\"mqtt\"} 0\n\
             # HELP demo_inference_seconds Detector time per frame.\n\
             # TYPE demo_inference_seconds histogram\n\
             demo_inference_seconds_bucket{camera=\"plaza\",le=\"0.002\"} 1\n\
             demo_inference_seconds_bucket{camera=\"plaza\",le=\"0.01\"} 3\n\
             demo_inference_seconds_bucket{camera=\"plaza\",le=\"1\"} 3\n\
             demo_inference_seconds_bucket{camera=\"plaza\",le=\"+Inf\"} 4\n\
             demo_inference_seconds_sum{camera=\"plaza\"} 1.5\n\
             demo_inference_seconds_count{camera=\"plaza\"} 4\n"
        );
    }
}
