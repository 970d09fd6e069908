//! The incremental BALANS model: the daemon's state and its plate-by-plate
//! correction.
//!
//! A [`Model`] holds everything a new plate is corrected against: the frozen
//! normalisation scale and PCA basis, one HNSW index per batch over the
//! *corrected* neighbour-space coordinates of every row incorporated so far,
//! and the rows' coverage.
//!
//! Incorporating a plate is split in two, so a caller can make the change
//! durable before applying it (write-ahead):
//! 1. [`Model::correct_plate`] (`&self`, pure): normalise the plate against
//!    its own controls with the frozen scale, project it, then for a few
//!    rounds sample every plate row as a landmark (new rows have coverage 0,
//!    so they come first) against every batch index plus the plate itself,
//!    and move the plate to the consensus of the rows already published
//!    (which never move: inductive semantics). It returns the corrected
//!    profiles and a [`PlateDelta`].
//! 2. [`Model::apply`] (`&mut self`): append the plate's corrected
//!    coordinates to its batch's index and add its affinities to coverage.
//!
//! Replaying the same plate (same id and content hash) is recognised by
//! [`Model::lookup`], so a redelivered plate is not added twice.
//!
//! The daemon corrects in the neighbour space (p dims) and maps the offset
//! back through the PCA loadings; the offline fit corrects every feature
//! directly. Per-plate cost depends on the plate size, the number of batches
//! and `log n` of the index sizes — not linearly on n.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use ndarray::{Array2, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use crate::method::align::{point_offsets, RowFeatures};
use crate::method::fit::Correction;
use crate::method::index::{BatchIndex, Neighbor};
use crate::method::params::{BatchScale, IndexKind, NeighborSpace, Params};
use crate::method::pca::{Pca, Whitening, WHITEN_RIDGE};
use crate::method::preprocess::{
    clipped, control_gain_figure, control_log_gains, median_inplace, shrunk_gains, GainGroups,
    MIN_CONTROLS_PER_PLATE, MIN_GAIN_CONTROLS,
};
use crate::method::rows::{Concat, MatrixRows, RowSource};
use crate::method::sampling::{compute_row_observed, SamplingConfig, SparseRow};
use crate::method::scales::ScaleCache;
use crate::qc::{finite, QcFigures};

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
    /// Coverage added to existing rows: (row id, amount).
    pub coverage_updates: Vec<(u64, f32)>,
    /// Coverage of the plate's own rows.
    pub plate_coverage: Vec<f32>,
    /// QC figures of the plate, kept as its batch's QC history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qc: Option<QcFigures>,
}

/// Per-plate quality figures computed while correcting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct PlateQc {
    /// Rows of the plate.
    pub rows: usize,
    /// Control rows found (0 without a selector).
    pub controls: usize,
    /// Mean norm of the offset applied, neighbour space (robust-z units).
    pub mean_offset: f64,
    /// Batch mixing of the plate's rows before correction: share of their
    /// nearest neighbours (over all batches) from other batches, relative
    /// to the share of other-batch rows in the model (1 = mixed).
    pub mixing_before: f64,
    /// The same after correction.
    pub mixing_after: f64,
    /// Median distance of the plate's rows to their nearest row of another
    /// batch, before correction (neighbour space).
    pub cross_batch_distance_before: f64,
    /// The same after correction.
    pub cross_batch_distance_after: f64,
    /// Median distance of control rows to their centroid, after correction
    /// (None without controls).
    pub control_dispersion: Option<f64>,
    /// Spread of the plate's controls against the reference's, folded to >= 1
    /// (`exp(|mean log-gain|)`; None without batch scaling or with fewer than
    /// 8 controls). The daemon removes a new batch's gain, so a failed
    /// staining shows here rather than in the offsets.
    #[serde(default)]
    pub control_gain: Option<f64>,
    /// Minimum coverage of the plate's rows.
    pub coverage_min: f64,
    /// Median coverage of the plate's rows.
    pub coverage_median: f64,
    /// True when the plate opened a batch the model had not seen.
    pub new_batch: bool,
}

impl PlateQc {
    /// The figures the outlier test uses (NaN -> None).
    pub fn figures(&self) -> QcFigures {
        QcFigures {
            mean_offset: finite(self.mean_offset),
            mixing_after: finite(self.mixing_after),
            cross_batch_distance_after: finite(self.cross_batch_distance_after),
            control_dispersion: self.control_dispersion.and_then(finite),
            control_gain: self.control_gain.and_then(finite),
            coverage_median: finite(self.coverage_median),
        }
    }
}

/// Seconds spent in the stages of [`Model::correct_plate`] (returned, not
/// reported: the core does no I/O; the pipeline feeds them to telemetry).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PlateTimings {
    /// Affinity-row sampling (landmark rows against every batch index).
    pub sampling: f64,
    /// Offsets from the sampled rows and the map back to features.
    pub correction: f64,
    /// The QC figures (mixing before/after, dispersion, coverage).
    pub qc: f64,
    /// Landmark rows sampled (plate rows x rounds).
    pub landmarks: usize,
}

/// A corrected plate.
#[derive(Debug, Clone)]
pub struct PlateCorrection {
    /// Corrected features (rows x all features, input units).
    pub corrected: Array2<f64>,
    /// QC figures.
    pub qc: PlateQc,
    /// The state change to apply.
    pub delta: PlateDelta,
    /// Stage timings.
    pub timings: PlateTimings,
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
}

/// The incremental model.
pub struct Model {
    meta: ModelMeta,
    pca: Pca,
    indices: Vec<BatchIndex>,
    y: Vec<f32>,
    batch_of: Vec<u32>,
    coverage: Vec<f32>,
}

/// Outcome of looking a plate up before correcting it.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// Not seen: correct it.
    New,
    /// Same id and content already incorporated: a replay.
    Replay(PlateRecord),
    /// Same id, different content.
    Clash(PlateRecord),
}

/// One plate row's nearest rows in every batch index: (squared distance,
/// batch id).
type RowHits = Vec<(f32, usize)>;

/// FNV-1a hash of bytes (stable across runs and platforms).
pub fn content_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

impl Model {
    /// A model seeded from an offline fit of a reference table.
    pub fn from_fit(fit: &Correction, features: Vec<String>, params: &Params) -> Result<Model> {
        let n = fit.y_after.nrows();
        let dims = fit.pca.dims();
        let meta = ModelMeta {
            params: params.clone(),
            features,
            varying: fit.varying.clone(),
            scale: fit.normalizer.scale.to_vec(),
            global_centre: fit.normalizer.global_centre.to_vec(),
            pca_mean: fit.pca.mean.to_vec(),
            pca_components: fit.pca.components.iter().copied().collect(),
            pca_whitening: fit.pca.whitening_row_major(),
            control_mad: fit.normalizer.control_mad.to_vec(),
            batch_gain: fit
                .batch_names
                .iter()
                .enumerate()
                .filter(|(b, _)| *b < fit.normalizer.batch_gain.nrows())
                .map(|(b, name)| (name.clone(), fit.normalizer.batch_gain.row(b).to_vec()))
                .collect(),
            dims,
            batches: fit.batch_names.clone(),
            plates: BTreeMap::new(),
            generation: 1,
        };
        let mut model = Model {
            pca: fit.pca.clone(),
            meta,
            indices: Vec::new(),
            y: Vec::new(),
            batch_of: Vec::new(),
            coverage: Vec::new(),
        };
        let y = fit
            .y_after
            .as_standard_layout()
            .iter()
            .copied()
            .collect::<Vec<f32>>();
        model.restore_rows(y, fit.batch_of.clone(), vec![1.0; n])?;
        Ok(model)
    }

    /// A model whose normalisation and basis come from a first plate (used
    /// when the daemon starts with no reference table). The plate itself is
    /// then incorporated like any other.
    pub fn bootstrap(
        x: ArrayView2<f64>,
        controls: Option<&[bool]>,
        features: Vec<String>,
        params: &Params,
    ) -> Result<Model> {
        let n = x.nrows();
        anyhow::ensure!(n >= 2, "the first plate needs at least 2 rows");
        let plate_of = vec![0u32; n];
        let gains = match params.batch_scale {
            BatchScale::Controls => Some(GainGroups {
                batch_of: &plate_of,
                n_batches: 1,
                shrinkage: params.gain_shrinkage,
            }),
            BatchScale::None => None,
        };
        let norm = crate::method::preprocess::Normalizer::fit(x, &plate_of, 1, controls, gains)?;
        let varying = norm.varying_features();
        anyhow::ensure!(
            !varying.is_empty(),
            "every feature of the first plate is constant"
        );
        let z = norm.normalise(x, &plate_of, None, &varying);
        let w = clipped(&z);
        let mut pca = Pca::fit(w.view(), params.neighbor_dims, params.seed)?;
        if let (NeighborSpace::Whitened, Some(mask)) = (params.neighbor_space, controls) {
            pca.whiten_on(w.view(), mask, WHITEN_RIDGE);
        }
        let meta = ModelMeta {
            params: params.clone(),
            features,
            varying,
            scale: norm.scale.to_vec(),
            global_centre: norm.global_centre.to_vec(),
            pca_mean: pca.mean.to_vec(),
            pca_components: pca.components.iter().copied().collect(),
            pca_whitening: pca.whitening_row_major(),
            control_mad: norm.control_mad.to_vec(),
            batch_gain: BTreeMap::new(),
            dims: pca.dims(),
            batches: Vec::new(),
            plates: BTreeMap::new(),
            generation: 1,
        };
        Ok(Model {
            pca,
            meta,
            indices: Vec::new(),
            y: Vec::new(),
            batch_of: Vec::new(),
            coverage: Vec::new(),
        })
    }

    /// Rebuild a model from its meta and row arrays (checkpoint restore).
    pub fn restore(
        meta: ModelMeta,
        y: Vec<f32>,
        batch_of: Vec<u32>,
        coverage: Vec<f32>,
    ) -> Result<Model> {
        let nv = meta.varying.len();
        let components = Array2::from_shape_vec((nv, meta.dims), meta.pca_components.clone())
            .context("checkpoint: PCA loadings have the wrong shape")?;
        let whitening = match &meta.pca_whitening {
            Some(w) => {
                let w = Array2::from_shape_vec((meta.dims, meta.dims), w.clone())
                    .context("checkpoint: whitening matrix has the wrong shape")?;
                Some(Whitening::from_matrix(w).context("checkpoint: whitening matrix")?)
            }
            None => None,
        };
        let pca = Pca {
            mean: ndarray::Array1::from_vec(meta.pca_mean.clone()),
            components,
            variances: ndarray::Array1::zeros(meta.dims),
            whitening,
        };
        let mut model = Model {
            meta,
            pca,
            indices: Vec::new(),
            y: Vec::new(),
            batch_of: Vec::new(),
            coverage: Vec::new(),
        };
        model.restore_rows(y, batch_of, coverage)?;
        Ok(model)
    }

    fn restore_rows(&mut self, y: Vec<f32>, batch_of: Vec<u32>, coverage: Vec<f32>) -> Result<()> {
        let p = self.meta.dims;
        let n = batch_of.len();
        anyhow::ensure!(
            y.len() == n * p && coverage.len() == n,
            "row arrays disagree in length"
        );
        let yv = ArrayView2::from_shape((n, p), &y).context("row array shape")?;
        let nb = self.meta.batches.len();
        self.indices = crate::method::index::build_batch_indices(
            yv,
            &batch_of,
            nb,
            self.index_kind(),
            self.threads(),
        )?;
        self.y = y;
        self.batch_of = batch_of;
        self.coverage = coverage;
        Ok(())
    }

    fn index_kind(&self) -> IndexKind {
        self.meta.params.index_kind()
    }

    fn threads(&self) -> usize {
        match self.meta.params.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            t => t,
        }
    }

    /// Scalar state.
    pub fn meta(&self) -> &ModelMeta {
        &self.meta
    }

    /// Corrected neighbour-space rows (row-major n x p).
    pub fn rows_y(&self) -> &[f32] {
        &self.y
    }

    /// Batch id of each row.
    pub fn rows_batch(&self) -> &[u32] {
        &self.batch_of
    }

    /// Coverage of each row.
    pub fn rows_coverage(&self) -> &[f32] {
        &self.coverage
    }

    /// Rows indexed per batch.
    pub fn indexed_rows(&self) -> Vec<(String, usize)> {
        self.meta
            .batches
            .iter()
            .zip(&self.indices)
            .map(|(b, i)| (b.clone(), i.len()))
            .collect()
    }

    /// Total rows incorporated.
    pub fn len(&self) -> usize {
        self.batch_of.len()
    }

    /// True when no row is incorporated.
    pub fn is_empty(&self) -> bool {
        self.batch_of.is_empty()
    }

    /// The model version a plate corrected now would carry.
    pub fn version(&self) -> String {
        format!("g{}.p{}", self.meta.generation, self.meta.plates.len())
    }

    /// Has this plate been incorporated, and with the same content?
    pub fn lookup(&self, plate: &str, content_hash: u64) -> Lookup {
        match self.meta.plates.get(plate) {
            None => Lookup::New,
            Some(r) if r.content_hash == content_hash => Lookup::Replay(r.clone()),
            Some(r) => Lookup::Clash(r.clone()),
        }
    }

    /// Map a plate's columns to the model's feature order: `names` are the
    /// plate's feature names; returns, per model feature, its plate column.
    pub fn feature_positions(&self, names: &[String]) -> Result<Vec<usize>> {
        let pos: std::collections::HashMap<&str, usize> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        let mut missing = Vec::new();
        let out: Vec<usize> = self
            .meta
            .features
            .iter()
            .filter_map(|f| {
                let p = pos.get(f.as_str()).copied();
                if p.is_none() {
                    missing.push(f.clone());
                }
                p
            })
            .collect();
        anyhow::ensure!(
            missing.is_empty(),
            "plate lacks {} of the model's feature columns (first: {})",
            missing.len(),
            missing.first().map(String::as_str).unwrap_or("")
        );
        Ok(out)
    }

    /// Normalise a plate against its own controls with the frozen scale and
    /// its batch's gains: returns z (rows x |varying|), the number of
    /// controls used and the plate's `control_gain` QC figure. The gains are the reference fit's for a batch it had;
    /// otherwise measured on the plate's own controls against the frozen
    /// pooled control MAD and shrunk the same way (gain 1 with fewer than
    /// [`MIN_GAIN_CONTROLS`] controls). `batch = None`: not a known batch.
    fn normalise_plate(
        &self,
        x: ArrayView2<f64>,
        controls: Option<&[bool]>,
        batch: Option<&str>,
    ) -> (Array2<f64>, usize, Option<f64>) {
        let n = x.nrows();
        let ctrl: Vec<usize> = controls
            .map(|m| (0..n).filter(|&i| m[i]).collect())
            .unwrap_or_default();
        let reference: Vec<usize> = if ctrl.len() >= MIN_CONTROLS_PER_PLATE {
            ctrl.clone()
        } else {
            (0..n).collect()
        };
        let v = &self.meta.varying;
        let centres: Vec<f64> = v
            .iter()
            .map(|&f| {
                let mut vals: Vec<f64> = reference.iter().map(|&i| x[[i, f]]).collect();
                median_inplace(&mut vals)
            })
            .collect();
        let (gains, control_gain) = self.plate_gains(x, &ctrl, &centres, batch);
        let mut z = Array2::zeros((n, v.len()));
        for (j, &f) in v.iter().enumerate() {
            let s = self.meta.scale[f] * gains[j];
            for i in 0..n {
                z[[i, j]] = (x[[i, f]] - centres[j]) / s;
            }
        }
        (z, ctrl.len(), control_gain)
    }

    /// Gains of the varying features for a plate (see
    /// [`Model::normalise_plate`]) and its `control_gain` QC figure (measured
    /// on its controls whichever gains are used).
    fn plate_gains(
        &self,
        x: ArrayView2<f64>,
        ctrl: &[usize],
        centres: &[f64],
        batch: Option<&str>,
    ) -> (Vec<f64>, Option<f64>) {
        let v = &self.meta.varying;
        let mad = &self.meta.control_mad;
        if self.meta.params.batch_scale == BatchScale::None || mad.is_empty() {
            return (vec![1.0; v.len()], None);
        }
        let measured =
            (ctrl.len() >= MIN_GAIN_CONTROLS).then(|| control_log_gains(x, ctrl, v, centres, mad));
        let figure = measured.as_deref().and_then(control_gain_figure);
        let gains = match (batch.and_then(|b| self.meta.batch_gain.get(b)), measured) {
            (Some(g), _) => v
                .iter()
                .map(|&f| g.get(f).copied().unwrap_or(1.0))
                .collect(),
            (None, Some(lg)) => shrunk_gains(&lg, ctrl.len(), self.meta.params.gain_shrinkage).0,
            (None, None) => vec![1.0; v.len()],
        };
        (gains, figure)
    }

    /// Project a block of rows into the neighbour space the way a plate is
    /// projected (normalised against its own controls with the frozen
    /// scale, clipped, PCA) — without aligning it. With [`Model::restore`]
    /// this seeds a model with many indexed rows cheaply (the streaming
    /// bench's warm start) when an offline fit would take too long.
    /// `batch`: the plate's batch (its frozen gains when the reference fit
    /// had it), `None` = measure the gains on the plate's controls.
    pub fn project(
        &self,
        x: ArrayView2<f64>,
        controls: Option<&[bool]>,
        batch: Option<&str>,
    ) -> Array2<f32> {
        let (z, _, _) = self.normalise_plate(x, controls, batch);
        self.pca.transform_f32(clipped(&z).view())
    }

    /// Correct one plate (all rows share `batch`). `x` is rows x features in
    /// the model's feature order. Does not change the model: apply the
    /// returned delta with [`Model::apply`].
    pub fn correct_plate(
        &self,
        plate: &str,
        batch: &str,
        x: ArrayView2<f64>,
        controls: Option<&[bool]>,
        content_hash: u64,
    ) -> Result<PlateCorrection> {
        let n_plate = x.nrows();
        anyhow::ensure!(n_plate >= 1, "plate {plate} has no rows");
        anyhow::ensure!(
            x.ncols() == self.meta.features.len(),
            "plate {plate} has {} features, the model {}",
            x.ncols(),
            self.meta.features.len()
        );
        if let Some(bad) = x.iter().position(|v| !v.is_finite()) {
            let (r, c) = (bad / x.ncols(), bad % x.ncols());
            anyhow::bail!(
                "plate {plate}: non-finite value in feature {} at row {}",
                self.meta.features[c],
                r + 1
            );
        }
        let params = &self.meta.params;
        let p = self.meta.dims;
        let (z, n_controls, control_gain) = self.normalise_plate(x, controls, Some(batch));
        let y_raw = self.pca.transform_f32(clipped(&z).view());
        let batch_id = self.meta.batches.iter().position(|b| b == batch);
        let n_batches = self.meta.batches.len();
        let plate_batch = n_batches as u32; // pseudo-batch of the plate in flight
        let old = MatrixRows::new(
            ArrayView2::from_shape((self.len(), p), &self.y).context("model rows")?,
            &self.batch_of,
        )?;
        let mut offset = Array2::<f32>::zeros((n_plate, p));
        let cfg = SamplingConfig::from_params(params, n_plate, f64::INFINITY, n_plate);
        let plate_ids: Vec<u32> = vec![plate_batch; n_plate];
        let mut last_rows: Vec<SparseRow> = Vec::new();
        let mut timings = PlateTimings::default();
        // Mixing before correction needs each row's k nearest rows of every
        // batch index at y_raw: exactly round 1's candidate queries, so they
        // are recorded there instead of repeated (same figures; their time
        // counts as sampling).
        let mut hits_before: Option<Vec<RowHits>> = None;
        let t_correction = std::time::Instant::now();
        if !self.is_empty() {
            for round in 0..params.rounds {
                let t_sampling = std::time::Instant::now();
                let current = &y_raw - &offset;
                let mut plate_index = BatchIndex::new(IndexKind::Exact, p, 1)?;
                let keys: Vec<u64> = (self.len()..self.len() + n_plate)
                    .map(|k| k as u64)
                    .collect();
                plate_index.add(&keys, current.view(), 1)?;
                let plate_rows = MatrixRows::new(current.view(), &plate_ids)?;
                let all = Concat {
                    a: &old,
                    b: &plate_rows,
                };
                let mut refs: Vec<&BatchIndex> = self.indices.iter().collect();
                refs.push(&plate_index);
                let cache = ScaleCache::sparse(n_batches + 1, params.k);
                let k = params.k;
                let record = round == 0;
                let (rows, hits): (Vec<SparseRow>, Vec<RowHits>) = {
                    use rayon::prelude::*;
                    let out: Vec<(SparseRow, RowHits)> = (self.len()..self.len() + n_plate)
                        .into_par_iter()
                        .map(|i| {
                            let mut hits: RowHits = Vec::new();
                            let row = compute_row_observed(
                                i,
                                &all,
                                &refs,
                                &cache,
                                &cfg,
                                &mut |c, nb| {
                                    if record && c < n_batches {
                                        hits.extend(nb.iter().take(k).map(|n| (n.dist2, c)));
                                    }
                                },
                            )?;
                            Ok((row, hits))
                        })
                        .collect::<Result<_>>()?;
                    out.into_iter().unzip()
                };
                if record {
                    hits_before = Some(hits);
                }
                timings.sampling += t_sampling.elapsed().as_secs_f64();
                timings.landmarks += rows.len();
                let own = |j: usize| -> Result<Vec<u32>> {
                    let nb: Vec<Neighbor> =
                        plate_index.search(all.row(j), params.k.max(params.m))?;
                    Ok(nb.iter().map(|n| n.key as u32).collect())
                };
                let off = point_offsets(
                    &RowFeatures(&all),
                    n_batches + 1,
                    &rows,
                    self.len()..self.len() + n_plate,
                    Some(plate_batch),
                    &own,
                )?;
                offset = offset + off.values.mapv(|v| v as f32);
                last_rows = rows;
            }
        }
        let y_corr = &y_raw - &offset;
        let t_qc = std::time::Instant::now();
        let (mixing_before, cross_batch_distance_before) = match hits_before {
            Some(h) => self.mixing_from_hits(h, batch_id),
            None => self.plate_mixing(&y_raw, batch_id)?,
        };
        let (mixing_after, cross_batch_distance_after) = self.plate_mixing(&y_corr, batch_id)?;
        let qc_mixing_after = t_qc.elapsed().as_secs_f64();
        timings.qc += qc_mixing_after;
        // Back to features: z - offset * W^-1 * V^T (only the neighbour subspace moves).
        let off64 = offset.mapv(|v| v as f64);
        let z_corr = &z - &self.pca.offsets_to_features(off64.view());
        let mut corrected = x.to_owned();
        for (j, &f) in self.meta.varying.iter().enumerate() {
            let (s, g) = (self.meta.scale[f], self.meta.global_centre[f]);
            for i in 0..n_plate {
                corrected[[i, f]] = z_corr[[i, j]] * s + g;
            }
        }
        timings.correction =
            (t_correction.elapsed().as_secs_f64() - qc_mixing_after - timings.sampling).max(0.0);
        let t_qc = std::time::Instant::now();
        // Coverage contributions.
        let mut plate_coverage = vec![0f32; n_plate];
        let mut updates: BTreeMap<u64, f32> = BTreeMap::new();
        for r in &last_rows {
            for &(j, a) in &r.entries {
                let j = j as usize;
                if j >= self.len() {
                    plate_coverage[j - self.len()] += a;
                } else {
                    *updates.entry(j as u64).or_insert(0.0) += a;
                }
            }
        }
        if last_rows.is_empty() {
            plate_coverage.iter_mut().for_each(|c| *c = 1.0);
        }
        let mut cov: Vec<f64> = plate_coverage.iter().map(|&c| c as f64).collect();
        let coverage_min = cov.iter().copied().fold(f64::INFINITY, f64::min);
        let coverage_median = median_inplace(&mut cov);
        let mean_offset = offset
            .rows()
            .into_iter()
            .map(|r| r.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt())
            .sum::<f64>()
            / n_plate as f64;
        let control_dispersion = controls.and_then(|m| {
            let idx: Vec<usize> = (0..n_plate).filter(|&i| m[i]).collect();
            if idx.len() < 2 {
                return None;
            }
            let sel = y_corr.select(Axis(0), &idx);
            let centre = sel.mean_axis(Axis(0))?;
            let mut d: Vec<f64> = sel
                .rows()
                .into_iter()
                .map(|r| {
                    r.iter()
                        .zip(centre.iter())
                        .map(|(a, b)| ((a - b) as f64).powi(2))
                        .sum::<f64>()
                        .sqrt()
                })
                .collect();
            Some(median_inplace(&mut d))
        });
        let qc = PlateQc {
            rows: n_plate,
            controls: n_controls,
            mean_offset,
            mixing_before,
            mixing_after,
            cross_batch_distance_before,
            cross_batch_distance_after,
            control_dispersion,
            control_gain,
            coverage_min,
            coverage_median,
            new_batch: batch_id.is_none(),
        };
        timings.qc += t_qc.elapsed().as_secs_f64();
        let delta = PlateDelta {
            plate: plate.to_string(),
            batch: batch.to_string(),
            content_hash,
            version: self.version(),
            y: y_corr.iter().copied().collect(),
            coverage_updates: updates.into_iter().collect(),
            plate_coverage,
            qc: Some(qc.figures()),
        };
        Ok(PlateCorrection {
            corrected,
            qc,
            delta,
            timings,
        })
    }

    /// Batch mixing of plate rows (coordinates `y`) among the model's rows:
    /// share of their k nearest neighbours (over all batch indices) from
    /// other batches, relative to the share of other-batch rows; and the
    /// median distance to the nearest other-batch row. NaN for an empty
    /// model (or a model holding only the plate's batch).
    ///
    /// `batch` is the plate's batch (None = a batch the model has not seen).
    /// Rows are queried in parallel.
    pub fn plate_mixing(&self, y: &Array2<f32>, batch: Option<usize>) -> Result<(f64, f64)> {
        use rayon::prelude::*;
        let k = self.meta.params.k;
        if self.is_empty() {
            return Ok((f64::NAN, f64::NAN));
        }
        let hits: Vec<RowHits> = (0..y.nrows())
            .into_par_iter()
            .map(|i| {
                let q: Vec<f32> = y.row(i).iter().copied().collect();
                let mut all: RowHits = Vec::new();
                for (c, index) in self.indices.iter().enumerate() {
                    for nb in index.search(&q, k)? {
                        all.push((nb.dist2, c));
                    }
                }
                Ok(all)
            })
            .collect::<Result<_>>()?;
        Ok(self.mixing_from_hits(hits, batch))
    }

    /// The mixing figures from each plate row's k nearest rows of every
    /// batch index, `(dist2, batch)` (see [`Model::plate_mixing`]).
    fn mixing_from_hits(&self, hits: Vec<RowHits>, batch_id: Option<usize>) -> (f64, f64) {
        let k = self.meta.params.k;
        let own_rows = batch_id.map_or(0, |b| self.indices[b].len());
        let expected = 1.0 - own_rows as f64 / self.len().max(1) as f64;
        if self.is_empty() || expected <= 0.0 {
            return (f64::NAN, f64::NAN);
        }
        let n = hits.len();
        let mut total = 0.0;
        let mut nearest_other: Vec<f64> = Vec::with_capacity(n);
        for row in hits {
            let mut all: Vec<(f32, bool)> = row
                .into_iter()
                .map(|(d, c)| (d, Some(c) != batch_id))
                .collect();
            all.sort_by(|a, b| a.0.total_cmp(&b.0));
            if let Some(d) = all.iter().find(|a| a.1) {
                nearest_other.push((d.0 as f64).sqrt());
            }
            all.truncate(k);
            let other = all.iter().filter(|a| a.1).count() as f64 / all.len().max(1) as f64;
            total += (other / expected).min(1.0);
        }
        (total / n.max(1) as f64, median_inplace(&mut nearest_other))
    }

    /// Apply a plate's state change (live, or when replaying the log).
    pub fn apply(&mut self, delta: &PlateDelta) -> Result<()> {
        let p = self.meta.dims;
        anyhow::ensure!(delta.y.len() % p == 0, "plate delta has a ragged row array");
        let n_new = delta.y.len() / p;
        anyhow::ensure!(
            delta.plate_coverage.len() == n_new,
            "plate delta coverage length"
        );
        if self.meta.plates.contains_key(&delta.plate) {
            return Ok(()); // idempotent
        }
        let b = match self.meta.batches.iter().position(|x| x == &delta.batch) {
            Some(b) => b,
            None => {
                self.meta.batches.push(delta.batch.clone());
                self.indices
                    .push(BatchIndex::new(self.index_kind(), p, self.threads())?);
                self.meta.batches.len() - 1
            }
        };
        let first = self.len() as u64;
        let keys: Vec<u64> = (first..first + n_new as u64).collect();
        let rows = ArrayView2::from_shape((n_new, p), &delta.y).context("plate delta rows")?;
        let threads = self.threads();
        self.indices[b].add(&keys, rows, threads)?;
        self.y.extend_from_slice(&delta.y);
        self.batch_of.extend(std::iter::repeat_n(b as u32, n_new));
        for &(j, a) in &delta.coverage_updates {
            if let Some(c) = self.coverage.get_mut(j as usize) {
                *c += a;
            }
        }
        self.coverage.extend_from_slice(&delta.plate_coverage);
        self.meta.plates.insert(
            delta.plate.clone(),
            PlateRecord {
                batch: delta.batch.clone(),
                first_row: first,
                rows: n_new as u64,
                content_hash: delta.content_hash,
                version: delta.version.clone(),
                qc: delta.qc,
            },
        );
        Ok(())
    }

    /// Re-derive a replayed plate's published output from the stored
    /// corrected coordinates (same values as when it was first published).
    pub fn replay_plate(
        &self,
        record: &PlateRecord,
        x: ArrayView2<f64>,
        controls: Option<&[bool]>,
    ) -> Result<Array2<f64>> {
        let p = self.meta.dims;
        let n = record.rows as usize;
        anyhow::ensure!(
            x.nrows() == n,
            "replayed plate has {} rows, recorded {n}",
            x.nrows()
        );
        let (z, _, _) = self.normalise_plate(x, controls, Some(&record.batch));
        let y_raw = self.pca.transform_f32(clipped(&z).view());
        let start = record.first_row as usize * p;
        let stored =
            ArrayView2::from_shape((n, p), &self.y[start..start + n * p]).context("stored rows")?;
        let offset = (&y_raw - &stored).mapv(|v| v as f64);
        let z_corr = &z - &self.pca.offsets_to_features(offset.view());
        let mut corrected = x.to_owned();
        for (j, &f) in self.meta.varying.iter().enumerate() {
            let (s, g) = (self.meta.scale[f], self.meta.global_centre[f]);
            for i in 0..n {
                corrected[[i, f]] = z_corr[[i, j]] * s + g;
            }
        }
        Ok(corrected)
    }

    /// QC figures of the batch's incorporated plates, oldest first (plates
    /// recorded without figures are skipped). Cost: one pass over the
    /// plate records.
    pub fn qc_history(&self, batch: &str) -> Vec<QcFigures> {
        let mut v: Vec<(u64, QcFigures)> = self
            .meta
            .plates
            .values()
            .filter(|r| r.batch == batch)
            .filter_map(|r| r.qc.map(|q| (r.first_row, q)))
            .collect();
        v.sort_by_key(|x| x.0);
        v.into_iter().map(|x| x.1).collect()
    }

    /// Start a new generation (after a deliberate realignment).
    pub fn bump_generation(&mut self) {
        self.meta.generation += 1;
    }
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
    fn figures_map_nan_to_none() {
        let qc = PlateQc {
            mean_offset: 1.5,
            mixing_after: f64::NAN,
            cross_batch_distance_after: f64::INFINITY,
            control_dispersion: Some(0.25),
            coverage_median: 2.0,
            ..PlateQc::default()
        };
        let f = qc.figures();
        assert_eq!(f.mean_offset, Some(1.5));
        assert_eq!(f.mixing_after, None);
        assert_eq!(f.cross_batch_distance_after, None);
        assert_eq!(f.control_dispersion, Some(0.25));
        assert_eq!(f.coverage_median, Some(2.0));
    }
}
