//! Per-plate QC verdicts: is a plate an outlier against its batch's history?
//!
//! Pure functions, no I/O. The daemon computes a plate's [`QcFigures`] while
//! correcting it (see [`crate::method::model::PlateQc`]), keeps every incorporated
//! plate's figures in the model (so the history survives restarts through the
//! snapshot and the write-ahead log) and asks [`assess`] whether the new plate
//! stands out from the previous plates of its batch. `balans correct --qc`
//! applies the same test offline, in plate order.
//!
//! The test is a one-sided robust z-score per figure:
//! `z = (x - median(h)) / max(1.4826 * MAD(h), spread_floor * |median(h)|, 1e-12)`
//! over the last `window` plates `h` of the batch, flagged when `z` exceeds
//! `z_threshold` in the bad direction (larger correction, lower mixing after
//! correction, farther from the other batches, more dispersed controls, lower
//! coverage). With fewer than `min_history` previous plates nothing is
//! flagged.

pub mod mixing;
pub mod table;

use serde::{Deserialize, Serialize};

use crate::method::preprocess::median_inplace;

/// `[qc]` configuration: outlier thresholds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QcConfig {
    /// Robust z-score above which a figure flags the plate.
    pub z_threshold: f64,
    /// Previous plates of the batch needed before any plate is flagged.
    pub min_history: usize,
    /// Most recent plates of the batch the history uses (0 = all).
    pub window: usize,
    /// Floor of the spread as a fraction of |median| (so a near-constant
    /// history does not flag tiny deviations).
    pub spread_floor: f64,
}

impl Default for QcConfig {
    fn default() -> Self {
        QcConfig {
            z_threshold: 3.5,
            min_history: 5,
            window: 50,
            spread_floor: 0.05,
        }
    }
}

impl QcConfig {
    /// Reject nonsensical values.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.z_threshold.is_finite() && self.z_threshold > 0.0,
            "[qc] z_threshold must be positive"
        );
        anyhow::ensure!(self.min_history >= 2, "[qc] min_history must be >= 2");
        anyhow::ensure!(
            self.spread_floor.is_finite() && self.spread_floor >= 0.0,
            "[qc] spread_floor must be >= 0"
        );
        Ok(())
    }
}

/// The figures of one plate that the outlier test looks at. `None` = not
/// available (no controls, or no other batch to mix with).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct QcFigures {
    /// Mean norm of the correction applied (neighbour space).
    pub mean_offset: Option<f64>,
    /// Batch mixing of the plate's rows after correction (1 = mixed).
    pub mixing_after: Option<f64>,
    /// Median distance to the nearest other-batch row after correction.
    pub cross_batch_distance_after: Option<f64>,
    /// Median distance of control rows to their centroid after correction.
    pub control_dispersion: Option<f64>,
    /// Spread of the plate's controls against the reference's, folded to >= 1.
    #[serde(default)]
    pub control_gain: Option<f64>,
    /// Median coverage of the plate's rows.
    pub coverage_median: Option<f64>,
}

/// Why a plate is an outlier (a small fixed set: also a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutlierReason {
    /// The correction applied is unusually large.
    MeanOffset,
    /// The plate mixes unusually poorly with the other batches after correction.
    MixingAfter,
    /// The plate sits unusually far from the other batches after correction.
    CrossBatchDistanceAfter,
    /// The plate's controls are unusually dispersed.
    ControlDispersion,
    /// The plate's controls are unusually bright or dim (spread) against the
    /// reference.
    ControlGain,
    /// The plate's rows reached unusually low coverage.
    CoverageMedian,
}

impl OutlierReason {
    /// Every reason, in label order.
    pub const ALL: [OutlierReason; 6] = [
        OutlierReason::MeanOffset,
        OutlierReason::MixingAfter,
        OutlierReason::CrossBatchDistanceAfter,
        OutlierReason::ControlDispersion,
        OutlierReason::ControlGain,
        OutlierReason::CoverageMedian,
    ];

    /// The label / field name.
    pub fn as_str(self) -> &'static str {
        match self {
            OutlierReason::MeanOffset => "mean_offset",
            OutlierReason::MixingAfter => "mixing_after",
            OutlierReason::CrossBatchDistanceAfter => "cross_batch_distance_after",
            OutlierReason::ControlDispersion => "control_dispersion",
            OutlierReason::ControlGain => "control_gain",
            OutlierReason::CoverageMedian => "coverage_median",
        }
    }

    /// The figure this reason tests, and +1 when high is bad, -1 when low is.
    fn figure(self, f: &QcFigures) -> (Option<f64>, f64) {
        match self {
            OutlierReason::MeanOffset => (f.mean_offset, 1.0),
            OutlierReason::MixingAfter => (f.mixing_after, -1.0),
            OutlierReason::CrossBatchDistanceAfter => (f.cross_batch_distance_after, 1.0),
            OutlierReason::ControlDispersion => (f.control_dispersion, 1.0),
            OutlierReason::ControlGain => (f.control_gain, 1.0),
            OutlierReason::CoverageMedian => (f.coverage_median, -1.0),
        }
    }
}

/// One figure's robust z-score against the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FigureScore {
    /// The figure (same names as [`OutlierReason::as_str`]).
    pub figure: OutlierReason,
    /// The plate's value.
    pub value: f64,
    /// Median of the history.
    pub median: f64,
    /// Signed robust z-score (positive = the bad direction).
    pub z: f64,
}

/// The verdict on one plate.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct OutlierVerdict {
    /// True when any figure exceeds the threshold.
    pub outlier: bool,
    /// The figures that did (empty when not an outlier).
    pub reasons: Vec<OutlierReason>,
    /// Previous plates of the batch the test used.
    pub history: usize,
    /// Every figure scored (empty when the history is too short).
    pub scores: Vec<FigureScore>,
}

/// `(median, 1.4826 * MAD)` of the finite values.
fn median_spread(values: &[f64]) -> Option<(f64, f64)> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    let med = median_inplace(&mut v);
    let mut dev: Vec<f64> = v.iter().map(|x| (x - med).abs()).collect();
    let mad = median_inplace(&mut dev);
    Some((med, 1.4826 * mad))
}

/// Assess `current` against `history` (the batch's previous plates, oldest
/// first; only the last `cfg.window` are used).
pub fn assess(history: &[QcFigures], current: &QcFigures, cfg: &QcConfig) -> OutlierVerdict {
    let h = if cfg.window > 0 && history.len() > cfg.window {
        &history[history.len() - cfg.window..]
    } else {
        history
    };
    let mut verdict = OutlierVerdict {
        history: h.len(),
        ..OutlierVerdict::default()
    };
    if h.len() < cfg.min_history {
        return verdict;
    }
    for reason in OutlierReason::ALL {
        let (value, sign) = reason.figure(current);
        let Some(value) = value.filter(|v| v.is_finite()) else {
            continue;
        };
        let past: Vec<f64> = h.iter().filter_map(|f| reason.figure(f).0).collect();
        if past.iter().filter(|x| x.is_finite()).count() < cfg.min_history {
            continue;
        }
        let Some((median, spread)) = median_spread(&past) else {
            continue;
        };
        let scale = spread.max(cfg.spread_floor * median.abs()).max(1e-12);
        let z = sign * (value - median) / scale;
        verdict.scores.push(FigureScore {
            figure: reason,
            value,
            median,
            z,
        });
        if z > cfg.z_threshold {
            verdict.reasons.push(reason);
        }
    }
    verdict.outlier = !verdict.reasons.is_empty();
    verdict
}

/// `None` for NaN/inf (figures that could not be computed).
pub fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fig(offset: f64, mixing: f64) -> QcFigures {
        QcFigures {
            mean_offset: Some(offset),
            mixing_after: Some(mixing),
            ..QcFigures::default()
        }
    }

    #[test]
    fn robust_z_matches_hand_computation() {
        // History offsets 1,2,3,4,5: median 3, MAD 1 -> spread 1.4826.
        let h: Vec<QcFigures> = (1..=5).map(|i| fig(i as f64, 0.9)).collect();
        let cfg = QcConfig {
            spread_floor: 0.0,
            ..QcConfig::default()
        };
        // z = (9 - 3) / 1.4826 = 4.0469 > 3.5 -> flagged.
        let v = assess(&h, &fig(9.0, 0.9), &cfg);
        assert!(v.outlier);
        assert_eq!(v.reasons, vec![OutlierReason::MeanOffset]);
        assert_eq!(v.history, 5);
        let s = &v.scores[0];
        assert_eq!(s.figure, OutlierReason::MeanOffset);
        assert!((s.z - 6.0 / 1.4826).abs() < 1e-12, "{}", s.z);
        assert_eq!(s.median, 3.0);
        // z = (8 - 3) / 1.4826 = 3.372 < 3.5 -> not flagged.
        let v = assess(&h, &fig(8.0, 0.9), &cfg);
        assert!(!v.outlier && v.reasons.is_empty());
        // Low offsets are not bad: z negative.
        let v = assess(&h, &fig(-100.0, 0.9), &cfg);
        assert!(!v.outlier);
        assert!(v.scores[0].z < 0.0);
    }

    #[test]
    fn low_mixing_is_bad_high_is_not() {
        let h: Vec<QcFigures> = [0.8, 0.9, 0.85, 0.95, 0.9]
            .iter()
            .map(|&m| fig(1.0, m))
            .collect();
        let cfg = QcConfig::default();
        // Mixing: median 0.9, MAD 0.05 -> spread 0.07413; floor 0.05*0.9=0.045.
        // z = -(0.5 - 0.9) / 0.07413 = 5.396.
        let v = assess(&h, &fig(1.0, 0.5), &cfg);
        assert_eq!(v.reasons, vec![OutlierReason::MixingAfter]);
        let s = v
            .scores
            .iter()
            .find(|s| s.figure == OutlierReason::MixingAfter)
            .unwrap();
        assert!((s.z - 0.4 / (1.4826 * 0.05)).abs() < 1e-9, "{}", s.z);
        let v = assess(&h, &fig(1.0, 1.0), &cfg);
        assert!(!v.outlier);
    }

    #[test]
    fn spread_floor_guards_a_constant_history() {
        let h: Vec<QcFigures> = (0..6).map(|_| fig(2.0, 1.0)).collect();
        // Floor 0.05 * 2 = 0.1: (2.3 - 2) / 0.1 = 3 is not flagged,
        // (2.4 - 2) / 0.1 = 4 is.
        let cfg = QcConfig::default();
        assert!(!assess(&h, &fig(2.3, 1.0), &cfg).outlier);
        assert!(assess(&h, &fig(2.4, 1.0), &cfg).outlier);
    }

    #[test]
    fn short_history_and_window() {
        let cfg = QcConfig::default();
        let h: Vec<QcFigures> = (0..4).map(|i| fig(1.0 + i as f64 * 0.01, 1.0)).collect();
        let v = assess(&h, &fig(100.0, 1.0), &cfg);
        assert!(!v.outlier && v.scores.is_empty() && v.history == 4);
        // Window: only the last 5 plates (offset 10) count, so 10 is normal.
        let mut h: Vec<QcFigures> = (0..20).map(|_| fig(1.0, 1.0)).collect();
        h.extend((0..5).map(|_| fig(10.0, 1.0)));
        let cfg = QcConfig {
            window: 5,
            ..QcConfig::default()
        };
        let v = assess(&h, &fig(10.0, 1.0), &cfg);
        assert_eq!(v.history, 5);
        assert!(!v.outlier);
        assert!(assess(&h, &fig(10.0, 1.0), &QcConfig::default()).outlier);
    }

    #[test]
    fn shipped_config_has_the_default_qc_and_metrics_sections() {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/balans.toml");
        let c = crate::config::Config::load_with_env(Some(&p), std::iter::empty()).unwrap();
        assert_eq!(c.qc, QcConfig::default());
        assert_eq!(c.metrics, crate::serve::telemetry::MetricsConfig::default());
    }

    #[test]
    fn qc_and_metrics_sections_from_the_environment() {
        let env = vec![
            ("BALANS_QC__Z_THRESHOLD".to_string(), "4".to_string()),
            ("BALANS_QC__MIN_HISTORY".to_string(), "8".to_string()),
            (
                "BALANS_METRICS__LISTEN".to_string(),
                "0.0.0.0:9464".to_string(),
            ),
        ];
        let c = crate::config::Config::load_with_env(None, env.into_iter()).unwrap();
        assert_eq!(c.qc.z_threshold, 4.0);
        assert_eq!(c.qc.min_history, 8);
        assert_eq!(
            c.metrics.address().unwrap(),
            Some("0.0.0.0:9464".parse().unwrap())
        );
        let bad = vec![("BALANS_QC__MIN_HISTORY".to_string(), "1".to_string())];
        assert!(crate::config::Config::load_with_env(None, bad.into_iter()).is_err());
        let bad = vec![("BALANS_METRICS__LISTEN".to_string(), "nope".to_string())];
        assert!(crate::config::Config::load_with_env(None, bad.into_iter()).is_err());
    }

    #[test]
    fn missing_figures_are_skipped() {
        let h: Vec<QcFigures> = (0..6)
            .map(|_| QcFigures {
                mean_offset: Some(1.0),
                ..QcFigures::default()
            })
            .collect();
        let cur = QcFigures {
            mean_offset: Some(1.0),
            control_dispersion: Some(100.0),
            ..QcFigures::default()
        };
        let v = assess(&h, &cur, &QcConfig::default());
        assert!(!v.outlier);
        assert_eq!(v.scores.len(), 1);
    }
}

/// One plate's row of the offline QC table (`balans correct --qc`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlateQcRow {
    /// Plate id.
    pub plate: String,
    /// Batch.
    pub batch: String,
    /// Rows of the plate.
    pub rows: usize,
    /// Control rows of the plate.
    pub controls: usize,
    /// Batch mixing of the plate's rows among the other plates' rows before
    /// correction (same definition as the daemon's `mixing_before`).
    pub mixing_before: f64,
    /// The same after correction.
    pub mixing_after: f64,
    /// Median distance to the nearest other-batch row, before.
    pub cross_batch_distance_before: f64,
    /// The same after.
    pub cross_batch_distance_after: f64,
    /// Mean norm of the correction applied (neighbour space).
    pub mean_offset: f64,
    /// Median distance of control rows to their centroid after correction.
    pub control_dispersion: Option<f64>,
    /// Spread of the plate's controls against the reference's, folded to >= 1.
    pub control_gain: Option<f64>,
    /// Outlier verdict against the previous plates of the batch (plate
    /// order = order of first appearance in the table).
    pub verdict: OutlierVerdict,
}

/// Per-plate QC of an offline fit, with the daemon's definitions: for each
/// plate, its rows' `k` nearest neighbours among the rows of the *other*
/// plates (every batch), in the neighbour space before (`y_before`) and after
/// (`y_after`) correction. Cost: rows x batches searches of k (+ plate size
/// in the own batch) neighbours, twice.
#[allow(clippy::too_many_arguments)]
pub fn offline_plate_qc(
    y_before: ndarray::ArrayView2<f32>,
    y_after: ndarray::ArrayView2<f32>,
    batch: &[String],
    plate: &[String],
    controls: Option<&[bool]>,
    control_gain: &dyn Fn(&str) -> Option<f64>,
    k: usize,
    kind: crate::method::params::IndexKind,
    cfg: &QcConfig,
) -> anyhow::Result<Vec<PlateQcRow>> {
    use std::collections::HashMap;
    let n = y_before.nrows();
    anyhow::ensure!(
        y_after.nrows() == n && batch.len() == n && plate.len() == n,
        "QC inputs disagree in length"
    );
    let (batch_of, batch_names) = crate::method::preprocess::dense_ids(batch);
    let nb = batch_names.len();
    let threads = rayon::current_num_threads();
    let before = crate::method::index::build_batch_indices(y_before, &batch_of, nb, kind, threads)?;
    let after = crate::method::index::build_batch_indices(y_after, &batch_of, nb, kind, threads)?;
    // Plates in order of first appearance.
    let mut order: Vec<String> = Vec::new();
    let mut rows_of: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, p) in plate.iter().enumerate() {
        let e = rows_of.entry(p.as_str()).or_default();
        if e.is_empty() {
            order.push(p.clone());
        }
        e.push(i);
    }
    let mut batch_rows = vec![0usize; nb];
    for &b in &batch_of {
        batch_rows[b as usize] += 1;
    }
    let plate_id: HashMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, p)| (p.as_str(), i))
        .collect();
    let plate_of: Vec<usize> = plate
        .iter()
        .map(|p| plate_id.get(p.as_str()).copied().unwrap_or(usize::MAX))
        .collect();
    // Mixing of rows `idx` (all of plate `pid`, batch `b`) in `y`.
    let mixing = |indices: &[crate::method::index::BatchIndex],
                  y: ndarray::ArrayView2<f32>,
                  idx: &[usize],
                  pid: usize,
                  b: usize|
     -> anyhow::Result<(f64, f64)> {
        let others = n - idx.len();
        let own = batch_rows[b] - idx.len();
        let expected = 1.0 - own as f64 / others.max(1) as f64;
        if others == 0 || expected <= 0.0 {
            return Ok((f64::NAN, f64::NAN));
        }
        let mut total = 0.0;
        let mut nearest_other = Vec::with_capacity(idx.len());
        for &i in idx {
            let q: Vec<f32> = y.row(i).iter().copied().collect();
            let mut all: Vec<(f32, bool)> = Vec::new();
            for (c, index) in indices.iter().enumerate() {
                let want = if c == b { k + idx.len() } else { k };
                if index.is_empty() || want == 0 {
                    continue;
                }
                for nb in index.search(&q, want.min(index.len()))? {
                    let j = nb.key as usize;
                    if plate_of.get(j) == Some(&pid) {
                        continue;
                    }
                    all.push((nb.dist2, c != b));
                }
            }
            all.sort_by(|a, b| a.0.total_cmp(&b.0));
            if let Some(d) = all.iter().find(|a| a.1) {
                nearest_other.push((d.0 as f64).sqrt());
            }
            all.truncate(k);
            let other = all.iter().filter(|a| a.1).count() as f64 / all.len().max(1) as f64;
            total += (other / expected).min(1.0);
        }
        let med = if nearest_other.is_empty() {
            f64::NAN
        } else {
            median_inplace(&mut nearest_other)
        };
        Ok((total / idx.len().max(1) as f64, med))
    };
    let mut history: HashMap<u32, Vec<QcFigures>> = HashMap::new();
    let mut out = Vec::with_capacity(order.len());
    for (pid, p) in order.iter().enumerate() {
        let idx = rows_of.get(p.as_str()).cloned().unwrap_or_default();
        let Some(&first) = idx.first() else { continue };
        let b = batch_of[first];
        let (mixing_before, cbd_before) = mixing(&before, y_before, &idx, pid, b as usize)?;
        let (mixing_after, cbd_after) = mixing(&after, y_after, &idx, pid, b as usize)?;
        let mean_offset = idx
            .iter()
            .map(|&i| {
                y_before
                    .row(i)
                    .iter()
                    .zip(y_after.row(i).iter())
                    .map(|(a, c)| ((a - c) as f64).powi(2))
                    .sum::<f64>()
                    .sqrt()
            })
            .sum::<f64>()
            / idx.len() as f64;
        let ctrl: Vec<usize> = match controls {
            Some(m) => idx
                .iter()
                .copied()
                .filter(|&i| m.get(i) == Some(&true))
                .collect(),
            None => Vec::new(),
        };
        let control_dispersion = (ctrl.len() >= 2).then(|| {
            let p = y_after.ncols();
            let mut centre = vec![0f64; p];
            for &i in &ctrl {
                for (c, v) in centre.iter_mut().zip(y_after.row(i).iter()) {
                    *c += *v as f64 / ctrl.len() as f64;
                }
            }
            let mut d: Vec<f64> = ctrl
                .iter()
                .map(|&i| {
                    y_after
                        .row(i)
                        .iter()
                        .zip(&centre)
                        .map(|(a, c)| (*a as f64 - c).powi(2))
                        .sum::<f64>()
                        .sqrt()
                })
                .collect();
            median_inplace(&mut d)
        });
        let control_gain = control_gain(p).and_then(finite);
        let figures = QcFigures {
            mean_offset: finite(mean_offset),
            mixing_after: finite(mixing_after),
            cross_batch_distance_after: finite(cbd_after),
            control_dispersion: control_dispersion.and_then(finite),
            control_gain,
            coverage_median: None,
        };
        let h = history.entry(b).or_default();
        let verdict = assess(h, &figures, cfg);
        h.push(figures);
        out.push(PlateQcRow {
            plate: p.clone(),
            batch: batch_names[b as usize].clone(),
            rows: idx.len(),
            controls: ctrl.len(),
            mixing_before,
            mixing_after,
            cross_batch_distance_before: cbd_before,
            cross_batch_distance_after: cbd_after,
            mean_offset,
            control_dispersion,
            control_gain,
            verdict,
        });
    }
    Ok(out)
}
