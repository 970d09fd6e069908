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
//! 1. [`Model::align_plate`] (`&self`, pure): normalise the plate against
//!    its own controls with the frozen scale, project it, then for a few
//!    rounds sample every plate row as a landmark (new rows have coverage 0,
//!    so they come first) against every batch index plus the plate itself,
//!    and move the plate to the consensus of the rows already published
//!    (which never move: inductive semantics). It returns the corrected
//!    profiles and a [`PlateDelta`], plus what the plate's QC figures are
//!    computed from (coordinates before and after, round 1's neighbour
//!    queries, coverage).
//! 2. [`Model::apply`] (`&mut self`): append the plate's corrected
//!    coordinates to its batch's index and add its affinities to coverage.
//!
//! The daemon does not call step 1 itself: [`crate::qc::correct_plate`]
//! aligns the plate and computes its QC figures, which the delta carries into
//! the model as the batch's QC history ([`Model::qc_history`]). The model
//! stores the figures but does not compute them, so the method core imports
//! nothing from `qc` (the dependency runs one way: `qc` -> `method`).
//!
//! Replaying the same plate (same id and content hash) is recognised by
//! [`Model::lookup`], so a redelivered plate is not added twice.
//!
//! Neighbours are found in the neighbour space (p dims). The offsets are
//! computed, as in the offline fit, on every varying feature when the model
//! keeps each row's corrected profile ([`ModelMeta::feature_rows`], the
//! default `correction_space = "features"`); otherwise in the neighbour
//! space and mapped back through the PCA loadings ([`projection`]). Per-plate
//! cost depends on the plate size, the number of batches and `log n` of the
//! index sizes — not linearly on n.
//!
//! Files: this one holds the model, its construction and the write-ahead
//! pair; [`meta`] the persisted records; [`projection`] a plate's way into
//! the neighbour space and back.

pub(crate) mod meta;
mod persist;
pub(crate) mod projection;
mod round;
mod summary;

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use ndarray::{Array2, ArrayView2};

pub use self::meta::{ModelMeta, PlateDelta, PlateRecord, QcFigures};
pub use self::persist::{IndexRestore, StoredIndex};
use crate::method::align::{point_offsets, Features, Frozen, RowFeatures};
use crate::method::fit::Correction;
use crate::method::index::{BatchIndex, Neighbor};
use crate::method::params::{BatchScale, CorrectionSpace, IndexKind, NeighborSpace, Params};
use crate::method::pca::{Pca, Whitening, WHITEN_RIDGE};
use crate::method::preprocess::{clipped, GainGroups, CLIP};
use crate::method::rows::{Concat, MatrixRows, RowSource};
use crate::method::sampling::{SamplingConfig, SparseRow};
use summary::{Offer, Summary};

/// Seconds spent in the stages of correcting a plate (returned, not
/// reported: the core does no I/O; the pipeline feeds them to telemetry).
/// [`Model::align_plate`] fills the method's stages; the QC stage is
/// [`crate::qc::correct_plate`]'s.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PlateTimings {
    /// Affinity-row sampling (landmark rows against every batch index).
    pub sampling: f64,
    /// Offsets from the sampled rows, the map back to features and the
    /// coverage bookkeeping.
    pub correction: f64,
    /// The QC figures (mixing before/after, dispersion, coverage).
    pub qc: f64,
    /// Landmark rows sampled (plate rows x rounds).
    pub landmarks: usize,
}

/// One plate row's nearest rows in every batch index of the model:
/// `(squared distance, batch id)`, at most k per index, index by index.
pub type RowHits = Vec<(f32, usize)>;

/// A plate aligned to the model (see [`Model::align_plate`]): the
/// correction, the state change, and what its QC figures are computed from.
#[derive(Debug, Clone)]
pub struct AlignedPlate {
    /// Corrected features (rows x all features, input units).
    pub corrected: Array2<f64>,
    /// The state change to apply. Its `qc` is `None`: the figures are
    /// computed outside the core and set by the caller
    /// ([`crate::qc::correct_plate`]).
    pub delta: PlateDelta,
    /// Neighbour-space coordinates of the plate's rows before correction.
    pub y_raw: Array2<f32>,
    /// The same after correction (the rows of `delta.y`).
    pub y_corrected: Array2<f32>,
    /// Round 1's queries: each row's k nearest rows in every batch index at
    /// `y_raw` (`None` when nothing was aligned: an empty model, or no
    /// rounds).
    pub hits_before: Option<Vec<RowHits>>,
    /// The plate's batch id in the model (`None` = a batch it has not seen).
    pub batch_id: Option<usize>,
    /// Control rows found (0 without a selector).
    pub controls: usize,
    /// Spread of the plate's controls against the reference's, folded to
    /// >= 1 (`None` without batch scaling or with too few controls).
    pub control_gain: Option<f64>,
    /// Stage timings (`qc` is 0).
    pub timings: PlateTimings,
}

/// The incremental model.
pub struct Model {
    meta: ModelMeta,
    pca: Pca,
    /// One index per batch: over every row of the batch, or over its
    /// summary when the batch has more than `summary_rows` rows.
    indices: Vec<BatchIndex>,
    /// The batch's summary ([`summary`]), `None` while its index holds
    /// every row.
    summaries: Vec<Option<Summary>>,
    y: Vec<f32>,
    batch_of: Vec<u32>,
    coverage: Vec<f32>,
    /// Corrected profiles (row-major n x |varying|, clipped and normalised)
    /// when [`ModelMeta::feature_rows`]; empty otherwise.
    w: Vec<f32>,
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

/// FNV-1a hash of bytes (stable across runs and platforms).
pub fn content_hash(bytes: &[u8]) -> u64 {
    content_hash_extend(CONTENT_HASH_START, bytes)
}

/// [`content_hash`]'s value before any byte: hash a stream in parts with
/// [`content_hash_extend`] (`content_hash(a ++ b)` =
/// `content_hash_extend(content_hash(a), b)`).
pub const CONTENT_HASH_START: u64 = 0xcbf29ce484222325;

/// Continue a [`content_hash`] `h` over more bytes.
pub fn content_hash_extend(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// The PCA as [`Model::restore`] rebuilds it from a snapshot: the
/// whitening's inverse recomputed from the stored matrix (the fit's own
/// inverse differs in the last bits). A new model uses this form from the
/// start, so a plate published before a restart and replayed after it gets
/// bit-identical values.
fn as_restored(mut pca: Pca) -> Result<Pca> {
    if let Some(w) = pca.whitening.take() {
        pca.whitening = Some(Whitening::from_matrix(w.w).context("whitening matrix")?);
    }
    Ok(pca)
}

impl Model {
    /// A model seeded from an offline fit of a reference table.
    pub fn from_fit(fit: &Correction, features: Vec<String>, params: &Params) -> Result<Model> {
        let n = fit.y_after.nrows();
        anyhow::ensure!(
            n == fit.batch_of.len(),
            "a model needs the fit's y_after (Keep): {n} rows for {} rows fitted",
            fit.batch_of.len()
        );
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
            feature_rows: params.correction_space == CorrectionSpace::Features,
            control_pool: BTreeMap::new(),
        };
        let mut model = Model {
            pca: as_restored(fit.pca.clone())?,
            meta,
            indices: Vec::new(),
            summaries: Vec::new(),
            y: Vec::new(),
            batch_of: Vec::new(),
            coverage: Vec::new(),
            w: Vec::new(),
        };
        if model.meta.feature_rows {
            // The fit's corrected profiles in its working space: the clipped
            // profiles minus the total offset (`z_before - z_after`).
            let (zb, za) = (&fit.z_before, &fit.z_after);
            anyhow::ensure!(
                zb.dim() == za.dim() && zb.ncols() == fit.varying.len() && zb.nrows() == n,
                "fit: corrected profiles have the wrong shape"
            );
            model.w = ndarray::Zip::from(zb)
                .and(za)
                .map_collect(|&b, &a| (b.clamp(-CLIP, CLIP) - (b - a)) as f32)
                .into_iter()
                .collect();
        }
        let y = fit
            .y_after
            .as_standard_layout()
            .iter()
            .copied()
            .collect::<Vec<f32>>();
        model.restore_rows_from(y, fit.batch_of.clone(), vec![1.0; n], None)?;
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
            feature_rows: params.correction_space == CorrectionSpace::Features,
            control_pool: BTreeMap::new(),
        };
        Ok(Model {
            pca: as_restored(pca)?,
            meta,
            indices: Vec::new(),
            summaries: Vec::new(),
            y: Vec::new(),
            batch_of: Vec::new(),
            coverage: Vec::new(),
            w: Vec::new(),
        })
    }

    /// Rebuild a model from its meta and row arrays (checkpoint restore),
    /// building every batch index from the rows (see
    /// [`Model::restore_with_indices`] to load stored ones).
    pub fn restore(
        meta: ModelMeta,
        y: Vec<f32>,
        batch_of: Vec<u32>,
        coverage: Vec<f32>,
    ) -> Result<Model> {
        let mut model = Model::restore_empty(meta)?;
        model.restore_rows_from(y, batch_of, coverage, None)?;
        Ok(model)
    }

    /// A model with `meta`'s basis and no rows yet.
    fn restore_empty(meta: ModelMeta) -> Result<Model> {
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
        Ok(Model {
            meta,
            pca,
            indices: Vec::new(),
            summaries: Vec::new(),
            y: Vec::new(),
            batch_of: Vec::new(),
            coverage: Vec::new(),
            w: Vec::new(),
        })
    }

    /// Set the rows' corrected profiles (row-major n x |varying|) of a model
    /// that keeps them ([`ModelMeta::feature_rows`]), after
    /// [`Model::restore`]: a snapshot stores them beside the
    /// neighbour-space rows.
    pub fn with_feature_rows(mut self, w: Vec<f32>) -> Result<Model> {
        anyhow::ensure!(
            self.meta.feature_rows,
            "this model corrects in the neighbour space and keeps no profiles"
        );
        let nv = self.meta.varying.len();
        anyhow::ensure!(
            w.len() == self.len() * nv,
            "{} profile values for {} rows x {nv} features",
            w.len(),
            self.len()
        );
        self.w = w;
        Ok(self)
    }

    /// Corrected profiles of the rows (row-major n x |varying|; empty when
    /// the model corrects in the neighbour space).
    pub fn rows_w(&self) -> &[f32] {
        &self.w
    }

    /// Whether plates are corrected in the feature space (the model keeps
    /// every row's profile), else in the neighbour space.
    fn in_features(&self) -> bool {
        self.meta.feature_rows
    }

    fn index_kind(&self) -> IndexKind {
        self.meta.params.index_kind()
    }

    /// Rows above which a batch is represented by its summary (`usize::MAX`
    /// = never: `summary_rows = 0`, or exact mode, which aligns on every
    /// row).
    fn summary_cap(&self) -> usize {
        let p = &self.meta.params;
        if p.exact || p.summary_rows == 0 {
            usize::MAX
        } else {
            p.summary_rows
        }
    }

    /// The index of one batch whose rows are `keys` (`row(k, buf)` appends
    /// row `k`'s coordinates to `buf`): over every row, or an exact index over its summary when it
    /// has more than `summary_rows` rows.
    fn batch_index_over(
        &self,
        keys: &[u64],
        row: &dyn Fn(u64, &mut Vec<f32>) -> Result<()>,
    ) -> Result<(BatchIndex, Option<Summary>)> {
        let p = self.meta.dims;
        let threads = self.threads();
        let (kind, held, summary) = if keys.len() > self.summary_cap() {
            let (s, held) = Summary::of(self.meta.params.seed, self.summary_cap(), keys);
            (IndexKind::Exact, held, Some(s))
        } else {
            (self.index_kind(), keys.to_vec(), None)
        };
        let mut flat = Vec::with_capacity(held.len() * p);
        for &k in &held {
            row(k, &mut flat)?;
        }
        let rows = ArrayView2::from_shape((held.len(), p), &flat).context("batch rows")?;
        let mut index = BatchIndex::new(kind, p, threads)?;
        index.add(&held, rows, threads)?;
        Ok((index, summary))
    }

    /// Add rows `keys` (their coordinates `rows`) to batch `b`'s index: all
    /// of them while the batch fits in `summary_rows`; past it, the batch
    /// switches to its summary, and then each new row enters only when it
    /// is sampled (in place of the row it replaces).
    fn add_to_batch(&mut self, b: usize, keys: &[u64], rows: ArrayView2<f32>) -> Result<()> {
        let threads = self.threads();
        let p = self.meta.dims;
        if let Some(summary) = self.summaries[b].as_mut() {
            for (&key, row) in keys.iter().zip(rows.outer_iter()) {
                if let Offer::Replaces(old) = summary.offer(key) {
                    let index = &mut self.indices[b];
                    anyhow::ensure!(
                        index.remove(old)?,
                        "batch summary: row {old} was not indexed"
                    );
                    index.add(&[key], row.insert_axis(ndarray::Axis(0)), threads)?;
                }
            }
            return Ok(());
        }
        if self.indices[b].len() + keys.len() <= self.summary_cap() {
            return self.indices[b].add(keys, rows, threads);
        }
        let mut all = self.indices[b].keys().to_vec();
        all.extend_from_slice(keys);
        let first = keys.first().copied().unwrap_or(u64::MAX);
        let y = &self.y;
        let row = |k: u64, buf: &mut Vec<f32>| -> Result<()> {
            let r = if k >= first {
                rows.row((k - first) as usize).to_slice()
            } else {
                y.get(k as usize * p..(k as usize + 1) * p)
            };
            buf.extend_from_slice(r.context("batch summary: row out of range")?);
            Ok(())
        };
        let (index, summary) = self.batch_index_over(&all, &row)?;
        self.indices[b] = index;
        self.summaries[b] = summary;
        Ok(())
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

    /// Rows in the batch indices (every row incorporated, less the rows
    /// of large batches outside their summaries).
    pub fn indexed_len(&self) -> usize {
        self.indices.iter().map(BatchIndex::len).sum()
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

    /// Align one plate (all rows share `batch`) to the model. `x` is rows x
    /// features in the model's feature order. Does not change the model:
    /// apply the returned delta with [`Model::apply`]. The daemon's entry
    /// point is [`crate::qc::correct_plate`], which adds the QC figures.
    pub fn align_plate(
        &self,
        plate: &str,
        batch: &str,
        x: ArrayView2<f64>,
        controls: Option<&[bool]>,
        content_hash: u64,
    ) -> Result<AlignedPlate> {
        let n_plate = x.nrows();
        anyhow::ensure!(n_plate >= 1, "plate {plate} has no rows");
        anyhow::ensure!(
            x.ncols() == self.meta.features.len(),
            "plate {plate} has {} features, the model {}",
            x.ncols(),
            self.meta.features.len()
        );
        if let Some(m) = controls {
            anyhow::ensure!(
                m.len() == n_plate,
                "plate {plate}: control mask has {} rows, the plate {n_plate}",
                m.len()
            );
        }
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
        let nv = self.meta.varying.len();
        let features = self.in_features();
        anyhow::ensure!(
            !features || self.w.len() == self.len() * nv,
            "the model keeps {} profile values for {} rows x {nv} features",
            self.w.len(),
            self.len()
        );
        let norm = self.normalise_plate(x, controls, Some(batch), None);
        let (z, n_controls, control_gain) = (norm.z, norm.controls, norm.control_gain);
        let w_plate = clipped(&z);
        let y_raw = self.pca.transform_f32(w_plate.view());
        let batch_id = self.meta.batches.iter().position(|b| b == batch);
        let n_batches = self.meta.batches.len();
        let plate_batch = n_batches as u32; // pseudo-batch of the plate in flight
        let old = MatrixRows::new(
            ArrayView2::from_shape((self.len(), p), &self.y).context("model rows")?,
            &self.batch_of,
        )?;
        // The offset so far: in the neighbour space (n_plate x p), or in the
        // feature space (n_plate x |varying|) when the model keeps profiles.
        let mut offset = Array2::<f64>::zeros((n_plate, if features { nv } else { p }));
        let cfg = SamplingConfig {
            mutual_share: params.plate_mutual_share,
            ..SamplingConfig::from_params(params, n_plate, f64::INFINITY, n_plate)
        };
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
            for round in 0..params.plate_rounds {
                let t_sampling = std::time::Instant::now();
                // The plate where it stands: its profiles minus the offset
                // (projected, as the offline fit re-projects each round), or
                // its neighbour-space rows minus the offset.
                let current_w = features.then(|| &w_plate - &offset);
                let current = match &current_w {
                    Some(cw) => self.pca.transform_f32(cw.view()),
                    None => &y_raw - &offset.mapv(|v| v as f32),
                };
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
                let round_rows =
                    self.sample_plate(&all, current.view(), &plate_index, &cfg, round == 0)?;
                let rows = round_rows.rows;
                if let Some(hits) = round_rows.hits {
                    hits_before = Some(hits);
                }
                timings.sampling += t_sampling.elapsed().as_secs_f64();
                timings.landmarks += rows.len();
                let own = |j: usize| -> Result<Vec<u32>> {
                    let nb: Vec<Neighbor> =
                        plate_index.search(all.row(j), params.k.max(params.m))?;
                    Ok(nb.iter().map(|n| n.key as u32).collect())
                };
                let targets = self.len()..self.len() + n_plate;
                let frozen = Some(Frozen {
                    batch: plate_batch,
                    moves: params.plate_move,
                });
                let off = match &current_w {
                    Some(cw) => point_offsets(
                        &ProfileFeatures {
                            model: ArrayView2::from_shape((self.len(), nv), &self.w)
                                .context("model profiles")?,
                            batch_of: &self.batch_of,
                            plate: cw.view(),
                            plate_batch,
                        },
                        n_batches + 1,
                        &rows,
                        targets,
                        frozen,
                        &own,
                    )?,
                    None => point_offsets(
                        &RowFeatures(&all),
                        n_batches + 1,
                        &rows,
                        targets,
                        frozen,
                        &own,
                    )?,
                };
                offset = offset + off.values;
                last_rows = rows;
            }
        }
        // What is published is re-derivable by a replay from the stored
        // (f32) corrected coordinates: the published offset is the f32
        // difference `raw - stored`, computed the same way by
        // [`Model::replay_plate`], so a replay publishes identical values.
        let (corrected, y_corr, w_corr) = if features {
            let w_corr = (&w_plate - &offset).mapv(|v| v as f32);
            let published = &w_plate - &w_corr.mapv(f64::from);
            // Unaligned (an empty model, or no rounds): the coordinates stay
            // as projected.
            let y_corr = if self.is_empty() || params.plate_rounds == 0 {
                y_raw.clone()
            } else {
                self.pca.transform_f32(w_corr.mapv(f64::from).view())
            };
            let corrected = self.to_features_from(x, &(&z - &published));
            (corrected, y_corr, w_corr.into_iter().collect())
        } else {
            let y_corr = &y_raw - &offset.mapv(|v| v as f32);
            let published = (&y_raw - &y_corr).mapv(f64::from);
            (
                self.to_features(x, &z, published.view()),
                y_corr,
                Vec::new(),
            )
        };
        let (plate_coverage, coverage_updates) = self.coverage_added(&last_rows, n_plate);
        timings.correction = (t_correction.elapsed().as_secs_f64() - timings.sampling).max(0.0);
        let delta = PlateDelta {
            plate: plate.to_string(),
            batch: batch.to_string(),
            content_hash,
            version: self.version(),
            y: y_corr.iter().copied().collect(),
            w: w_corr,
            control_dev: norm.control_dev,
            pooled_controls: norm.pooled as u64,
            coverage_updates,
            plate_coverage,
            qc: None,
        };
        Ok(AlignedPlate {
            corrected,
            delta,
            y_raw,
            y_corrected: y_corr,
            hits_before,
            batch_id,
            controls: n_controls,
            control_gain,
            timings,
        })
    }

    /// The coverage a plate's last round of landmark rows adds: to its own
    /// rows (1 each when nothing was sampled: nothing to align to), and to
    /// the model's rows as `(row id, amount)` sorted by row id.
    fn coverage_added(&self, rows: &[SparseRow], n_plate: usize) -> (Vec<f32>, Vec<(u64, f32)>) {
        let mut plate_coverage = vec![0f32; n_plate];
        let mut updates: BTreeMap<u64, f32> = BTreeMap::new();
        for r in rows {
            for &(j, a) in &r.entries {
                let j = j as usize;
                if j >= self.len() {
                    plate_coverage[j - self.len()] += a;
                } else {
                    *updates.entry(j as u64).or_insert(0.0) += a;
                }
            }
        }
        if rows.is_empty() {
            plate_coverage.iter_mut().for_each(|c| *c = 1.0);
        }
        (plate_coverage, updates.into_iter().collect())
    }

    /// The model's batch indices (index = batch id), for queries against
    /// the incorporated rows (the QC's mixing figures).
    pub fn batch_indices(&self) -> &[BatchIndex] {
        &self.indices
    }

    /// Rows in batch `b`'s index (0 for an unknown id): every row of the
    /// batch, or its summary's.
    pub fn batch_rows(&self, b: usize) -> usize {
        self.indices.get(b).map_or(0, BatchIndex::len)
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
        let nv = self.meta.varying.len();
        if self.in_features() {
            anyhow::ensure!(
                delta.w.len() == n_new * nv,
                "plate delta has {} profile values for {n_new} rows x {nv} features",
                delta.w.len()
            );
        }
        let b = match self.meta.batches.iter().position(|x| x == &delta.batch) {
            Some(b) => b,
            None => {
                self.meta.batches.push(delta.batch.clone());
                self.indices
                    .push(BatchIndex::new(self.index_kind(), p, self.threads())?);
                self.summaries.push(None);
                self.meta.batches.len() - 1
            }
        };
        let first = self.len() as u64;
        let keys: Vec<u64> = (first..first + n_new as u64).collect();
        let rows = ArrayView2::from_shape((n_new, p), &delta.y).context("plate delta rows")?;
        self.add_to_batch(b, &keys, rows)?;
        self.y.extend_from_slice(&delta.y);
        if self.in_features() {
            self.w.extend_from_slice(&delta.w);
        }
        self.batch_of.extend(std::iter::repeat_n(b as u32, n_new));
        for &(j, a) in &delta.coverage_updates {
            if let Some(c) = self.coverage.get_mut(j as usize) {
                *c += a;
            }
        }
        self.coverage.extend_from_slice(&delta.plate_coverage);
        if !delta.control_dev.is_empty() && !self.meta.batch_gain.contains_key(&delta.batch) {
            let pool = self
                .meta
                .control_pool
                .entry(delta.batch.clone())
                .or_default();
            let room = (projection::MAX_POOLED_CONTROLS * nv).saturating_sub(pool.len());
            let take = (delta.control_dev.len() / nv.max(1)).min(room / nv.max(1)) * nv;
            pool.extend_from_slice(&delta.control_dev[..take]);
        }
        self.meta.plates.insert(
            delta.plate.clone(),
            PlateRecord {
                batch: delta.batch.clone(),
                first_row: first,
                rows: n_new as u64,
                content_hash: delta.content_hash,
                version: delta.version.clone(),
                qc: delta.qc,
                pooled_controls: delta.pooled_controls,
            },
        );
        Ok(())
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

/// The rows' corrected profiles followed by the plate's current ones: the
/// space a model that keeps profiles computes a plate's offsets in.
struct ProfileFeatures<'a> {
    /// The model's rows (n x |varying|).
    model: ArrayView2<'a, f32>,
    /// Batch id of each model row.
    batch_of: &'a [u32],
    /// The plate's rows where they stand (n_plate x |varying|).
    plate: ArrayView2<'a, f64>,
    /// The plate's pseudo-batch.
    plate_batch: u32,
}

impl Features for ProfileFeatures<'_> {
    fn dims(&self) -> usize {
        self.model.ncols()
    }
    fn batch(&self, j: usize) -> u32 {
        self.batch_of.get(j).copied().unwrap_or(self.plate_batch)
    }
    fn accumulate(&self, j: usize, a: f64, acc: &mut [f64]) {
        let n = self.model.nrows();
        // Over slices where the rows are contiguous (always, as built), so
        // the loops vectorise; element by element, so the same bits.
        if j < n {
            let row = self.model.row(j);
            match row.to_slice() {
                Some(r) => acc
                    .iter_mut()
                    .zip(r)
                    .for_each(|(o, v)| *o += a * f64::from(*v)),
                None => acc
                    .iter_mut()
                    .zip(row)
                    .for_each(|(o, v)| *o += a * f64::from(*v)),
            }
        } else {
            let row = self.plate.row(j - n);
            match row.to_slice() {
                Some(r) => acc.iter_mut().zip(r).for_each(|(o, v)| *o += a * v),
                None => acc.iter_mut().zip(row).for_each(|(o, v)| *o += a * v),
            }
        }
    }
}
