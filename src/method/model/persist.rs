//! The model's per-batch indices as bytes, for a snapshot.
//!
//! An HNSW index is derived data: it follows from the rows of its batch
//! (inserted in row order). Rebuilding ten indices of 100k rows takes about
//! a minute on two cores, so a snapshot also stores each batch's serialised
//! graph ([`Model::index_bytes`], one batch at a time so a snapshot holds one
//! serialised index in memory) and a restart loads it back
//! ([`Model::restore_with_indices`]) instead of rebuilding it.
//!
//! A stored index is never trusted blindly: the caller verifies its
//! checksum (the snapshot manifest), and the load checks it against the
//! checksummed rows — dimensions, row count, graph settings, and a sample
//! of its stored vectors against the rows'. An index that is missing,
//! damaged or does not match is rebuilt from the rows, and the restore says
//! which and why ([`IndexRestore`]), so the caller can warn.

use anyhow::{Context, Result};
use ndarray::ArrayView2;
use rayon::prelude::*;

use super::summary::Summary;
use super::{Model, ModelMeta};
use crate::method::index::{BatchIndex, IndexConfig};
use crate::method::params::IndexKind;

/// Rows of a stored index compared with the model's rows when it is loaded
/// (evenly spaced, first and last included).
const SAMPLED_ROWS: usize = 16;

/// A batch's stored index as the caller found it: its bytes (checksum
/// verified), or why there are none usable.
pub type StoredIndex = std::result::Result<Vec<u8>, String>;

/// What the restore did with one batch's index.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexRestore {
    /// Loaded from the stored bytes.
    Loaded,
    /// Built from the rows: nothing is stored for this backend (the exact
    /// index is its rows), or the batch is represented by its summary.
    Built,
    /// Rebuilt from the rows because the stored index was missing, damaged
    /// or did not match them (the reason).
    Rebuilt(String),
}

impl Model {
    /// Batch `b`'s index serialised; `None` for the exact backend (or an
    /// unknown batch id).
    pub fn index_bytes(&self, b: usize) -> Result<Option<Vec<u8>>> {
        match self.indices.get(b) {
            Some(index) => index.to_bytes(),
            None => Ok(None),
        }
    }

    /// [`Model::restore`], taking each batch's index from `stored` (one
    /// entry per batch of `meta`) where it loads and matches the rows, and
    /// building it from the rows otherwise. Returns what happened to each
    /// batch's index.
    pub fn restore_with_indices(
        meta: ModelMeta,
        y: Vec<f32>,
        batch_of: Vec<u32>,
        coverage: Vec<f32>,
        stored: Vec<StoredIndex>,
    ) -> Result<(Model, Vec<IndexRestore>)> {
        anyhow::ensure!(
            stored.len() == meta.batches.len(),
            "{} stored indices for {} batches",
            stored.len(),
            meta.batches.len()
        );
        let mut model = Model::restore_empty(meta)?;
        let outcome = model.restore_rows_from(y, batch_of, coverage, Some(stored))?;
        Ok((model, outcome))
    }

    /// Set the rows and build (or load) the batch indices. `stored`:
    /// `None` = build every index from the rows.
    pub(super) fn restore_rows_from(
        &mut self,
        y: Vec<f32>,
        batch_of: Vec<u32>,
        coverage: Vec<f32>,
        stored: Option<Vec<StoredIndex>>,
    ) -> Result<Vec<IndexRestore>> {
        let p = self.meta.dims;
        let n = batch_of.len();
        anyhow::ensure!(
            y.len() == n * p && coverage.len() == n,
            "row arrays disagree in length"
        );
        let yv = ArrayView2::from_shape((n, p), &y).context("row array shape")?;
        let nb = self.meta.batches.len();
        let mut members: Vec<Vec<u64>> = vec![Vec::new(); nb];
        for (i, &b) in batch_of.iter().enumerate() {
            let slot = members
                .get_mut(b as usize)
                .with_context(|| format!("row {i}: batch id {b} out of range {nb}"))?;
            slot.push(i as u64);
        }
        let kind = self.index_kind();
        let threads = self.threads();
        let mut stored: Vec<Option<StoredIndex>> = match stored {
            Some(s) => s.into_iter().map(Some).collect(),
            None => vec![None; nb],
        };
        stored.resize(nb, None);
        let cap = self.summary_cap();
        let this = &*self;
        let built: Vec<(BatchIndex, Option<Summary>, IndexRestore)> = members
            .into_par_iter()
            .zip(stored.into_par_iter())
            .map(|(keys, stored)| {
                if keys.len() > cap {
                    // A summary: rebuilt from the rows (what it holds
                    // follows from the batch's row ids; nothing is stored).
                    let row = |k: u64, buf: &mut Vec<f32>| -> Result<()> {
                        let r = y.get(k as usize * p..(k as usize + 1) * p);
                        buf.extend_from_slice(r.context("row out of range")?);
                        Ok(())
                    };
                    let (index, summary) = this.batch_index_over(&keys, &row)?;
                    return Ok((index, summary, IndexRestore::Built));
                }
                let reason = match (kind, stored) {
                    (IndexKind::Exact, _) | (_, None) => None,
                    (IndexKind::Hnsw, Some(Err(why))) => Some(why),
                    (IndexKind::Hnsw, Some(Ok(bytes))) => {
                        let step = (keys.len() / SAMPLED_ROWS).max(1);
                        let sample: Vec<(u64, &[f32])> = keys
                            .iter()
                            .step_by(step)
                            .chain(keys.last())
                            .map(|&k| (k, &y[k as usize * p..(k as usize + 1) * p]))
                            .collect();
                        let config = IndexConfig::balans(kind);
                        match BatchIndex::from_bytes(
                            config,
                            p,
                            keys.clone(),
                            &bytes,
                            &sample,
                            threads,
                        ) {
                            Ok(index) => return Ok((index, None, IndexRestore::Loaded)),
                            Err(e) => Some(format!("{e:#}")),
                        }
                    }
                };
                let mut index = BatchIndex::new(kind, p, threads)?;
                let rows = yv.select(
                    ndarray::Axis(0),
                    &keys.iter().map(|&k| k as usize).collect::<Vec<_>>(),
                );
                index.add(&keys, rows.view(), threads)?;
                Ok((
                    index,
                    None,
                    reason.map_or(IndexRestore::Built, IndexRestore::Rebuilt),
                ))
            })
            .collect::<Result<_>>()?;
        let mut outcome = Vec::with_capacity(built.len());
        self.indices.clear();
        self.summaries.clear();
        for (index, summary, what) in built {
            self.indices.push(index);
            self.summaries.push(summary);
            outcome.push(what);
        }
        self.y = y;
        self.batch_of = batch_of;
        self.coverage = coverage;
        Ok(outcome)
    }
}
