//! Reading this node's own metrics back: the Prometheus text the recorder
//! renders, parsed and filtered to one node's `node` label.
//!
//! Metric handles are write-only, and several nodes in one process (tests)
//! share one recorder, so the admin endpoints read what `/metrics` would
//! show instead of keeping a second set of counters on the hot path. Only
//! the text format this exporter writes is understood; anything else on a
//! line is skipped, never an error.

use std::collections::BTreeMap;

/// One sample line of one node: name, the labels other than `node`, value.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl MetricSample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// The samples of `node` in Prometheus exposition `text`.
pub fn node_samples(text: &str, node: &str) -> Vec<MetricSample> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(parse_line)
        .filter(|(sample, of)| of.as_deref() == Some(node) && !sample.name.is_empty())
        .map(|(sample, _)| sample)
        .collect()
}

/// Parses `name{k="v",...} value`; returns the sample and its `node` label.
fn parse_line(line: &str) -> Option<(MetricSample, Option<String>)> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    let mut node = None;
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(inner)?;
        for (key, value) in parsed {
            if key == "node" {
                node = Some(value);
            } else {
                labels.push((key, value));
            }
        }
        rest = after;
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        number => number.parse().ok()?,
    };
    Some((MetricSample { name, labels, value }, node))
}

/// Parses `k="v",...}` (escapes `\\`, `\"`, `\n`); returns the labels and
/// what follows the closing brace.
fn parse_labels(mut text: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        text = text.trim_start_matches(',');
        if let Some(after) = text.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, after_key) = text.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after_key.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key.trim().to_string(), value));
        text = &after_key[end + 1..];
    }
}

/// Sum of the samples named `name` whose labels include every `(k, v)` of
/// `matching`.
pub fn sum(samples: &[MetricSample], name: &str, matching: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && matching.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .map(|s| s.value)
        .sum()
}

/// Sums of the samples named `name` by the value of `label`.
pub fn by_label(samples: &[MetricSample], name: &str, label: &str) -> BTreeMap<String, f64> {
    let mut sums = BTreeMap::new();
    for sample in samples.iter().filter(|s| s.name == name) {
        if let Some(value) = sample.label(label) {
            *sums.entry(value.to_string()).or_insert(0.0) += sample.value;
        }
    }
    sums
}

/// The cumulative buckets `(le, count)` of histogram `name` (every series
/// of it summed), in increasing `le`.
pub fn histogram_buckets(samples: &[MetricSample], name: &str) -> Vec<(f64, f64)> {
    let bucket = format!("{name}_bucket");
    let mut buckets: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for sample in samples.iter().filter(|s| s.name == bucket) {
        let Some(le) = sample.label("le").and_then(|le| match le {
            "+Inf" => Some(f64::INFINITY),
            finite => finite.parse::<f64>().ok(),
        }) else {
            continue;
        };
        // f64 bits order like the values for non-negative numbers.
        buckets.entry(le.to_bits()).or_insert((le, 0.0)).1 += sample.value;
    }
    buckets.into_values().collect()
}

/// The `q` quantile (0..=1) of cumulative `buckets`, interpolated linearly
/// within its bucket, as Prometheus' `histogram_quantile` does; `None`
/// without observations. In the `+Inf` bucket it is the highest finite bound.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let within = count - lower.1;
            let fraction = if within > 0.0 { (rank - lower.1) / within } else { 1.0 };
            return Some(lower.0 + (le - lower.0) * fraction);
        }
        lower = (le, count);
    }
    Some(lower.0)
}

/// Cumulative buckets of `newer` minus `older` (observations in between);
/// buckets missing in `older` count as zero.
pub fn bucket_delta(newer: &[(f64, f64)], older: &[(f64, f64)]) -> Vec<(f64, f64)> {
    newer
        .iter()
        .map(|&(le, count)| {
            let before = older.iter().find(|(l, _)| *l == le).map_or(0.0, |(_, c)| *c);
            (le, (count - before).max(0.0))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# TYPE starling_connections gauge
starling_connections{node="node-1"} 3
starling_connections{node="node-2"} 5
starling_errors_total{node="node-1",code="bad_request"} 2
starling_errors_total{node="node-1",code="internal"} 0
starling_odd{node="node-1",note="a \"quoted\\ }value"} 1
starling_delivery_latency_seconds_bucket{node="node-1",path="local",le="0.001"} 4
starling_delivery_latency_seconds_bucket{node="node-1",path="local",le="0.01"} 8
starling_delivery_latency_seconds_bucket{node="node-1",path="local",le="+Inf"} 10
starling_delivery_latency_seconds_bucket{node="node-1",path="cross_node",le="0.001"} 0
starling_delivery_latency_seconds_bucket{node="node-1",path="cross_node",le="0.01"} 0
starling_delivery_latency_seconds_bucket{node="node-1",path="cross_node",le="+Inf"} 10
garbage line without value
"#;

    #[test]
    fn only_the_named_nodes_samples_are_read_with_escaped_labels() {
        let samples = node_samples(TEXT, "node-1");
        assert_eq!(sum(&samples, "starling_connections", &[]), 3.0);
        let errors = by_label(&samples, "starling_errors_total", "code");
        assert_eq!(errors.get("bad_request"), Some(&2.0));
        let odd = samples.iter().find(|s| s.name == "starling_odd").unwrap();
        assert_eq!(odd.label("note"), Some(r#"a "quoted\ }value"#));
        assert_eq!(sum(&node_samples(TEXT, "node-2"), "starling_connections", &[]), 5.0);
    }

    #[test]
    fn quantiles_interpolate_within_buckets_of_all_series() {
        let samples = node_samples(TEXT, "node-1");
        let buckets = histogram_buckets(&samples, "starling_delivery_latency_seconds");
        assert_eq!(buckets, vec![(0.001, 4.0), (0.01, 8.0), (f64::INFINITY, 20.0)]);
        // Rank 4 of 20 is the top of the first bucket.
        assert_eq!(quantile(&buckets, 0.2), Some(0.001));
        // Rank 6: half-way through the second bucket.
        let median_of_second = quantile(&buckets, 0.3).unwrap();
        assert!((median_of_second - 0.0055).abs() < 1e-9, "{median_of_second}");
        // In +Inf: the highest finite bound.
        assert_eq!(quantile(&buckets, 0.99), Some(0.01));
        assert_eq!(quantile(&[(0.001, 0.0), (f64::INFINITY, 0.0)], 0.5), None);
        let delta = bucket_delta(&buckets, &[(0.001, 4.0), (0.01, 4.0), (f64::INFINITY, 4.0)]);
        assert_eq!(delta, vec![(0.001, 0.0), (0.01, 4.0), (f64::INFINITY, 16.0)]);
    }
}
