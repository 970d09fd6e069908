//! Categorical label encoding shared by all metrics.
//!
//! Labels arrive as strings; metrics work on dense codes `0..n_levels`. Codes
//! follow the sorted order of the level names, as `pandas.Categorical` does,
//! so per-level outputs line up with the reference implementations.

use std::collections::BTreeMap;

/// Dense integer codes for a categorical column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Codes {
    /// Code of each row, in `0..levels.len()`.
    pub codes: Vec<usize>,
    /// Level names, sorted; `levels[c]` is the name of code `c`.
    pub levels: Vec<String>,
}

impl Codes {
    /// Encode string labels.
    pub fn new<S: AsRef<str>>(labels: &[S]) -> Codes {
        let mut map: BTreeMap<&str, usize> = BTreeMap::new();
        for l in labels {
            map.insert(l.as_ref(), 0);
        }
        let levels: Vec<String> = map.keys().map(|s| s.to_string()).collect();
        for (i, v) in map.values_mut().enumerate() {
            *v = i;
        }
        let codes = labels.iter().map(|l| map[l.as_ref()]).collect();
        Codes { codes, levels }
    }

    /// Encode integer codes that may be sparse (re-densified in sorted order).
    pub fn from_codes(raw: &[usize]) -> Codes {
        let strs: Vec<String> = raw.iter().map(|c| format!("{c:020}")).collect();
        let mut c = Codes::new(&strs);
        c.levels = c
            .levels
            .iter()
            .map(|s| s.trim_start_matches('0').to_string())
            .collect();
        c
    }

    /// Number of distinct levels.
    pub fn n_levels(&self) -> usize {
        self.levels.len()
    }

    /// Rows per level.
    pub fn counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.levels.len()];
        for &k in &self.codes {
            c[k] += 1;
        }
        c
    }

    /// Row indices of each level.
    pub fn members(&self) -> Vec<Vec<usize>> {
        let mut m = vec![Vec::new(); self.levels.len()];
        for (i, &k) in self.codes.iter().enumerate() {
            m[k].push(i);
        }
        m
    }

    /// Codes of a subset of rows, re-encoded densely.
    pub fn subset(&self, rows: &[usize]) -> Codes {
        let raw: Vec<usize> = rows.iter().map(|&i| self.codes[i]).collect();
        let mut present: Vec<usize> = raw.clone();
        present.sort_unstable();
        present.dedup();
        let codes = raw
            .iter()
            .map(|c| present.partition_point(|p| p < c))
            .collect();
        let levels = present.iter().map(|&c| self.levels[c].clone()).collect();
        Codes { codes, levels }
    }
}

/// Median ignoring NaN (numpy `nanmedian`); NaN if nothing is left.
pub fn nanmedian(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Mean ignoring NaN; NaN if nothing is left.
pub fn nanmean(values: &[f64]) -> f64 {
    let v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_sorted_names_and_subset_recodes() {
        let c = Codes::new(&["b", "a", "c", "a"]);
        assert_eq!(c.codes, vec![1, 0, 2, 0]);
        assert_eq!(c.counts(), vec![2, 1, 1]);
        let s = c.subset(&[0, 2]);
        assert_eq!(s.codes, vec![0, 1]);
        assert_eq!(s.levels, vec!["b".to_string(), "c".to_string()]);
        assert_eq!(Codes::from_codes(&[7, 3, 7]).codes, vec![1, 0, 1]);
    }

    #[test]
    fn nan_statistics() {
        assert_eq!(nanmedian(&[3.0, f64::NAN, 1.0, 2.0, 10.0]), 2.5);
        assert!(nanmedian(&[f64::NAN]).is_nan());
        assert_eq!(nanmean(&[1.0, f64::NAN, 3.0]), 2.0);
    }
}
