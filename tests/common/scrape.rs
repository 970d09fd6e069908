//! A Prometheus text scrape, parsed (tests/ops.rs).

use std::collections::{BTreeMap, BTreeSet};

/// A scrape: series (name, sorted labels) -> value, and the family names.
pub struct Scrape {
    pub series: BTreeMap<(String, BTreeMap<String, String>), f64>,
    pub text: String,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let mut series = BTreeMap::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (key, value) = line.rsplit_once(' ').unwrap();
            let value: f64 = match value {
                "NaN" => f64::NAN,
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap(),
            };
            let (name, labels) = match key.split_once('{') {
                None => (key.to_string(), BTreeMap::new()),
                Some((n, rest)) => {
                    let body = rest.trim_end_matches('}');
                    let mut m = BTreeMap::new();
                    for pair in body.split("\",").filter(|p| !p.is_empty()) {
                        let (k, v) = pair.split_once('=').unwrap();
                        m.insert(k.to_string(), v.trim_matches('"').to_string());
                    }
                    (n.to_string(), m)
                }
            };
            series.insert((name, labels), value);
        }
        Scrape {
            series,
            text: text.to_string(),
        }
    }

    /// The value of `name` with exactly `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        *self
            .series
            .get(&(name.to_string(), want))
            .unwrap_or_else(|| panic!("no series {name} {labels:?} in\n{}", self.text))
    }

    /// Series names (histograms give _bucket/_sum/_count) and family names.
    pub fn names(&self) -> BTreeSet<String> {
        let mut v: BTreeSet<String> = self.series.keys().map(|k| k.0.clone()).collect();
        for line in self.text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                if let Some(n) = rest.split_whitespace().next() {
                    v.insert(n.to_string());
                }
            }
        }
        v
    }
}

// ---------------------------------------------------------------- data

/// `name` is exported: as a series, or as a histogram family once its
/// `_bucket`/`_sum`/`_count` suffix is stripped.
pub fn exported(names: &BTreeSet<String>, name: &str) -> bool {
    if names.contains(name) {
        return true;
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .any(|suf| name.strip_suffix(suf).is_some_and(|b| names.contains(b)))
}
