//! The model's persisted records: what the daemon's state directory and
//! write-ahead log hold besides the large row arrays.
//!
//! These types are serialised with serde (`src/serve/state.rs`), so their
//! field names and JSON layout are a file format: a field is only ever
//! added, with `#[serde(default)]`, so a state written by an older build
//! still restores.
//!
//! [`QcFigures`] lives here rather than in [`crate::qc`] because the model
//! stores each plate's figures as its batch's QC history (the outlier test
//! needs it after a restart). It is plain data: the figures are *computed*
//! in [`crate::qc`], which imports the model — never the other way round.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::method::params::Params;

/// The figures of one plate that the outlier test looks at (the batch's QC
/// history, see [`crate::qc::assess`]). `None` = not available (no
/// controls, or no other batch to mix with). Definitions:
/// [`crate::qc::figures`].
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

/// What the model remembers of an incorporated plate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlateRecord {
    /// Batch name.
    pub batch: String,
    /// First row id of the plate in the model.
    pub first_row: u64,
    /// Rows of the plate.
    pub rows: u64,
    /// Content hash of the plate's input (to tell a replay from a clash).
    pub content_hash: u64,
    /// Model version the plate was corrected with.
    pub version: String,
    /// QC figures of the plate (the batch's QC history; absent in state
    /// written before they were recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qc: Option<QcFigures>,
    /// Pooled controls of the batch's earlier plates its gains used (a
    /// replay uses as many; see [`ModelMeta::control_pool`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pooled_controls: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// The state change of incorporating one plate (the write-ahead record).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlateDelta {
    /// Plate id.
    pub plate: String,
    /// Batch name.
    pub batch: String,
    /// Content hash of the input.
    pub content_hash: u64,
    /// Model version used.
    pub version: String,
    /// Corrected neighbour-space coordinates of the plate's rows (row-major).
    pub y: Vec<f32>,
    /// Corrected profiles of the plate's rows (clipped, normalised varying
    /// features, row-major) when the model keeps them
    /// ([`ModelMeta::feature_rows`]); empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub w: Vec<f32>,
    /// The plate's control deviations from their centre (controls x varying
    /// features, row-major) when its batch pools controls
    /// ([`ModelMeta::control_pool`]); empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub control_dev: Vec<f32>,
    /// Pooled controls of earlier plates its gains used.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pooled_controls: u64,
    /// Coverage added to existing rows: (row id, amount).
    pub coverage_updates: Vec<(u64, f32)>,
    /// Coverage of the plate's own rows.
    pub plate_coverage: Vec<f32>,
    /// QC figures of the plate, kept as its batch's QC history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qc: Option<QcFigures>,
}

/// Serialisable scalar state (the large arrays are stored separately).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelMeta {
    /// Method parameters.
    pub params: Params,
    /// Feature names, in the order plates must provide them.
    pub features: Vec<String>,
    /// Indices of corrected features.
    pub varying: Vec<usize>,
    /// Robust scale per feature.
    pub scale: Vec<f64>,
    /// Global centre per feature.
    pub global_centre: Vec<f64>,
    /// PCA mean (length |varying|).
    pub pca_mean: Vec<f64>,
    /// PCA loadings, row-major |varying| x p.
    pub pca_components: Vec<f64>,
    /// Control whitening of the PCA scores, row-major p x p (`None` = plain
    /// PCA; states written before the whitening existed have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pca_whitening: Option<Vec<f64>>,
    /// Pooled control MAD per feature, the reference of the batch gains
    /// (empty = no batch scaling; states written before it existed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub control_mad: Vec<f64>,
    /// Per batch of the reference fit, its control gain per feature (frozen:
    /// plates of these batches use it; plates of other batches measure
    /// their own from their controls).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub batch_gain: BTreeMap<String, Vec<f64>>,
    /// p.
    pub dims: usize,
    /// Batch names (index = batch id).
    pub batches: Vec<String>,
    /// Incorporated plates.
    pub plates: BTreeMap<String, PlateRecord>,
    /// Generation: bumped by a refit/realign; part of the model version.
    pub generation: u64,
    /// The model keeps every row's corrected profile (clipped, normalised
    /// varying features) and corrects plates in that space
    /// ([`crate::method::params::CorrectionSpace::Features`]). Absent in
    /// state written before: those models correct in the neighbour space.
    #[serde(default)]
    pub feature_rows: bool,
    /// Per batch the reference fit did not have: its plates' control
    /// deviations from their plate's control centre (row-major, controls x
    /// varying features, first plates first, at most
    /// [`super::projection::MAX_POOLED_CONTROLS`] rows), from which its gains
    /// are measured once there are enough, instead of each plate's few.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub control_pool: BTreeMap<String, Vec<f32>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_written_before_qc_figures_still_loads() {
        // A plate record and a log record as written before the QC history
        // existed: no `qc` field.
        let r: PlateRecord = serde_json::from_str(
            r#"{"batch":"B1","first_row":0,"rows":2,"content_hash":7,"version":"g1.p0"}"#,
        )
        .unwrap();
        assert_eq!(r.qc, None);
        let d: PlateDelta = serde_json::from_str(
            r#"{"plate":"P","batch":"B1","content_hash":7,"version":"g1.p0","y":[],
                "coverage_updates":[],"plate_coverage":[]}"#,
        )
        .unwrap();
        assert_eq!(d.qc, None);
        // And the new field round-trips (NaN-free: figures are Options).
        let q = QcFigures {
            mean_offset: Some(0.5),
            mixing_after: None,
            ..QcFigures::default()
        };
        let d2 = PlateDelta { qc: Some(q), ..d };
        let back: PlateDelta = serde_json::from_str(&serde_json::to_string(&d2).unwrap()).unwrap();
        assert_eq!(back.qc, Some(q));
    }

    #[test]
    fn qc_figures_keep_their_json_layout() {
        // The layout the state directory and the log hold: one key per
        // figure, `null` when absent; `control_gain` may be missing (written
        // before it existed).
        let q = QcFigures {
            mean_offset: Some(1.5),
            mixing_after: Some(0.75),
            cross_batch_distance_after: None,
            control_dispersion: Some(0.25),
            control_gain: None,
            coverage_median: Some(2.0),
        };
        assert_eq!(
            serde_json::to_string(&q).unwrap(),
            r#"{"mean_offset":1.5,"mixing_after":0.75,"cross_batch_distance_after":null,"control_dispersion":0.25,"control_gain":null,"coverage_median":2.0}"#
        );
        let old: QcFigures = serde_json::from_str(
            r#"{"mean_offset":1.5,"mixing_after":0.75,"cross_batch_distance_after":null,
                "control_dispersion":0.25,"coverage_median":2.0}"#,
        )
        .unwrap();
        assert_eq!(old, q);
    }
}
