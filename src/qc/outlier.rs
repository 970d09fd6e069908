//! The outlier verdict: does a plate stand out from its batch's history?
//!
//! The test is a one-sided robust z-score per figure:
//! `z = (x - median(h)) / max(1.4826 * MAD(h), spread_floor * |median(h)|, 1e-12)`
//! over the last `window` plates `h` of the batch, flagged when `z` exceeds
//! `z_threshold` in the bad direction (larger correction, lower mixing after
//! correction, farther from the other batches, more dispersed controls, lower
//! coverage). With fewer than `min_history` previous plates nothing is
//! flagged.
//!
//! Pure functions, no I/O: the daemon keeps the history in the model
//! ([`crate::method::model::Model::qc_history`]), `balans correct --qc` in a
//! map while it walks the plates in order.

use serde::{Deserialize, Serialize};

use crate::method::model::QcFigures;
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
    /// Robust z (distance from the plate's median in the model's robust
    /// scale of the feature) above which a cell counts as an extreme value
    /// in the plate's QC record (`extreme_cells`) and sets the verdict's
    /// `extreme_values` flag (`inf` = never). The plate is corrected as
    /// usual; values beyond `[correct] max_abs_value` are refused instead.
    pub extreme_z: f64,
}

impl Default for QcConfig {
    fn default() -> Self {
        QcConfig {
            z_threshold: 3.5,
            min_history: 5,
            window: 50,
            spread_floor: 0.05,
            extreme_z: 50.0,
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
        anyhow::ensure!(
            self.extreme_z > 0.0,
            "[qc] extreme_z must be positive (inf = never)"
        );
        Ok(())
    }
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
    /// The plate holds cells beyond `[qc] extreme_z` (its QC record's
    /// `extreme_cells`). Not an outlier reason: set by
    /// [`crate::qc::assess_plate`], independent of the history.
    #[serde(default)]
    pub extreme_values: bool,
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
        assert_eq!(c.metrics, crate::config::MetricsConfig::default());
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
