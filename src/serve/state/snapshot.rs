//! A snapshot: the whole model in one directory, checksummed.
//!
//! ```text
//! snapshot/meta.json       ModelMeta (params, basis, batches, plates)
//! snapshot/y.f32           corrected neighbour-space rows, little-endian f32
//! snapshot/batch.u32       batch id per row
//! snapshot/coverage.f32    coverage per row
//! snapshot/w.f32           corrected profiles per row (rows x varying features, f32),
//!                          only for a model that keeps them (`meta.feature_rows`)
//! snapshot/index-<b>.usearch  batch b's HNSW index (derived data, see below)
//! snapshot/manifest.json   length and 64-bit hash of each file above, rows, dims
//! ```
//!
//! The index files spare a restart the rebuild of every HNSW index (about a
//! minute at 1M rows on two cores). They are derived from the rows, so
//! damage to them is not fatal: an index file that is missing, fails its
//! checksum, or does not match the (checksummed) rows is rebuilt from the
//! rows with a warning ([`read`]; `balans state check` lists it). Only a
//! snapshot with a manifest has its index files used: without checksums
//! every index is rebuilt.
//!
//! The manifest is written last and fsynced with the directory, so a
//! snapshot with a manifest is complete. [`read`] verifies every file's
//! length and hash against it, then the model's consistency: row counts
//! against the manifest and the meta's plates, dimensions, finite and
//! bounded values, batch ids. A snapshot without a manifest predates
//! checksums: it restores with a warning (unless the state directory's
//! `FORMAT` file says it was written by a build that writes manifests —
//! then the missing manifest is damage and is refused).

use std::fs::File;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

use crate::method::model::{content_hash, IndexRestore, Model, ModelMeta, PlateDelta, StoredIndex};
use crate::method::params::IndexKind;

/// Largest absolute neighbour-space coordinate accepted from a snapshot or
/// a log record. Real coordinates are PCA scores of clipped, normalised
/// profiles (tens at most); a larger one is damage, and would overflow the
/// f32 squared distances of the index.
pub const MAX_ABS_COORD: f32 = 1e9;

/// The files of a snapshot besides the manifest.
pub const FILES: [&str; 4] = ["meta.json", "y.f32", "batch.u32", "coverage.f32"];
/// The corrected profiles (a model with `feature_rows` only).
pub const PROFILES: &str = "w.f32";
/// The manifest's file name.
pub const MANIFEST: &str = "manifest.json";

/// The file of batch `b`'s stored index.
pub fn index_file(b: usize) -> String {
    format!("index-{b}.usearch")
}

/// One file in the manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileSum {
    /// File name inside the snapshot directory.
    pub name: String,
    /// Length in bytes.
    pub len: u64,
    /// [`content_hash`] of the bytes.
    pub hash: u64,
}

/// `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Snapshot format (2: the first with a manifest).
    pub format: u32,
    /// Rows of the model.
    pub rows: u64,
    /// Neighbour-space dimensions.
    pub dims: u64,
    /// Plates incorporated.
    pub plates: u64,
    /// Every other file of the snapshot.
    pub files: Vec<FileSum>,
}

fn le_bytes<T: Copy, const N: usize>(v: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(v.len() * N);
    for x in v {
        bytes.extend_from_slice(&f(*x));
    }
    bytes
}

/// Write `bytes` to `path` and fsync it.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Fsync a directory (its entries: renames, creations, truncations).
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot sync directory {}", dir.display()))
}

/// Write the model's snapshot into the (empty, existing) directory `dir`:
/// the data files, then the manifest, each fsynced, then the directory.
pub fn write(dir: &Path, model: &Model) -> Result<()> {
    let files: Vec<(String, Vec<u8>)> = vec![
        (FILES[0].into(), serde_json::to_vec(model.meta())?),
        (FILES[1].into(), le_bytes(model.rows_y(), f32::to_le_bytes)),
        (
            FILES[2].into(),
            le_bytes(model.rows_batch(), u32::to_le_bytes),
        ),
        (
            FILES[3].into(),
            le_bytes(model.rows_coverage(), f32::to_le_bytes),
        ),
    ];
    let mut files = files;
    if model.meta().feature_rows {
        files.push((PROFILES.into(), le_bytes(model.rows_w(), f32::to_le_bytes)));
    }
    let mut sums = Vec::new();
    let mut put = |name: String, bytes: &[u8]| -> Result<()> {
        write_synced(&dir.join(&name), bytes)?;
        sums.push(FileSum {
            name,
            len: bytes.len() as u64,
            hash: content_hash(bytes),
        });
        Ok(())
    };
    for (name, bytes) in files {
        put(name, &bytes)?;
    }
    // One serialised index in memory at a time.
    for b in 0..model.meta().batches.len() {
        if let Some(bytes) = model.index_bytes(b)? {
            put(index_file(b), &bytes)?;
        }
    }
    let manifest = Manifest {
        format: 2,
        rows: model.len() as u64,
        dims: model.meta().dims as u64,
        plates: model.meta().plates.len() as u64,
        files: sums,
    };
    write_synced(&dir.join(MANIFEST), &serde_json::to_vec_pretty(&manifest)?)?;
    sync_dir(dir)
}

/// Read a snapshot file, checked against its manifest entry.
fn read_checked(dir: &Path, name: &str, manifest: Option<&Manifest>) -> Result<Vec<u8>> {
    let path = dir.join(name);
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    if let Some(m) = manifest {
        let sum = m
            .files
            .iter()
            .find(|f| f.name == name)
            .with_context(|| format!("{}: not listed in {MANIFEST}", path.display()))?;
        ensure!(
            bytes.len() as u64 == sum.len,
            "{}: {} bytes, the manifest says {}",
            path.display(),
            bytes.len(),
            sum.len
        );
        ensure!(
            content_hash(&bytes) == sum.hash,
            "{}: checksum mismatch (the file is damaged)",
            path.display()
        );
    }
    Ok(bytes)
}

fn words(path: &Path, bytes: &[u8]) -> Result<Vec<[u8; 4]>> {
    ensure!(
        bytes.len() % 4 == 0,
        "{}: {} bytes, not a whole number of 4-byte values",
        path.display(),
        bytes.len()
    );
    Ok(bytes
        .chunks_exact(4)
        .map(|c| [c[0], c[1], c[2], c[3]])
        .collect())
}

/// Does `dir` hold a manifest?
pub fn has_manifest(dir: &Path) -> bool {
    dir.join(MANIFEST).exists()
}

/// Read and verify a snapshot (see the module doc). `require_manifest`:
/// refuse a snapshot without one. A batch index rebuilt from the rows
/// (its stored file missing, damaged or not matching) is logged as a
/// warning.
pub fn read(dir: &Path, require_manifest: bool) -> Result<Model> {
    let (model, indices) = read_with_indices(dir, require_manifest)?;
    for (b, r) in indices.iter().enumerate() {
        if let IndexRestore::Rebuilt(why) = r {
            tracing::warn!(
                file = %dir.join(index_file(b)).display(),
                batch = model.meta().batches.get(b).map_or("", String::as_str),
                reason = %why,
                "snapshot: stored index not used, rebuilt from the checksummed rows"
            );
        }
    }
    Ok(model)
}

/// A stored index file, verified against its manifest entry: its bytes, or
/// why there are none usable.
fn stored_index(dir: &Path, b: usize, manifest: Option<&Manifest>) -> StoredIndex {
    let name = index_file(b);
    let Some(m) = manifest else {
        return Err(format!("{name}: the snapshot has no {MANIFEST}"));
    };
    if !m.files.iter().any(|f| f.name == name) {
        return Err(format!("{name} is not listed in {MANIFEST}"));
    }
    read_checked(dir, &name, Some(m)).map_err(|e| format!("{e:#}"))
}

/// [`read`], except that every batch index is built from the rows, as
/// when the model was first built, even when stored files are present.
///
/// An HNSW index loaded from its file answers every query it answered
/// before, but rows *added* to it afterwards land differently (the graph's
/// level generator starts afresh, where an index built row by row has
/// advanced it by every insertion), so the plates aligned next can differ
/// in their last bits from those an unsaved model would align. Saved models
/// promise that `load` + `apply` equals applying to the model that was
/// saved; they pay the rebuild (a restart of the daemon does not: it needs
/// to be ready fast, and what it publishes is logged and replayed
/// bit-identically).
pub fn read_rebuilt(dir: &Path, require_manifest: bool) -> Result<Model> {
    read_inner(dir, require_manifest, false).map(|(m, _)| m)
}

/// [`read`], returning what happened to each batch's index instead of
/// logging it (`balans state check` reports it).
pub fn read_with_indices(dir: &Path, require_manifest: bool) -> Result<(Model, Vec<IndexRestore>)> {
    read_inner(dir, require_manifest, true)
}

/// [`read_with_indices`]; `use_stored`: load the stored index files (else
/// build every index from the rows).
fn read_inner(
    dir: &Path,
    require_manifest: bool,
    use_stored: bool,
) -> Result<(Model, Vec<IndexRestore>)> {
    let mpath = dir.join(MANIFEST);
    let manifest: Option<Manifest> = match std::fs::read(&mpath) {
        Ok(b) => Some(
            serde_json::from_slice(&b)
                .with_context(|| format!("{}: not a snapshot manifest", mpath.display()))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if require_manifest {
                bail!(
                    "{} is missing (this state directory was written with checksums)",
                    mpath.display()
                );
            }
            tracing::warn!(
                snapshot = %dir.display(),
                "snapshot predates checksums (no manifest.json): restored unverified; the next snapshot adds one"
            );
            None
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", mpath.display())),
    };
    let m = manifest.as_ref();
    let meta_path = dir.join(FILES[0]);
    let meta = super::parse_meta(&read_checked(dir, FILES[0], m)?)
        .with_context(|| format!("{}", meta_path.display()))?;
    check_meta(&meta).with_context(|| format!("{}", meta_path.display()))?;
    let yp = dir.join(FILES[1]);
    let y: Vec<f32> = words(&yp, &read_checked(dir, FILES[1], m)?)?
        .into_iter()
        .map(f32::from_le_bytes)
        .collect();
    let bp = dir.join(FILES[2]);
    let batch: Vec<u32> = words(&bp, &read_checked(dir, FILES[2], m)?)?
        .into_iter()
        .map(u32::from_le_bytes)
        .collect();
    let cp = dir.join(FILES[3]);
    let cov: Vec<f32> = words(&cp, &read_checked(dir, FILES[3], m)?)?
        .into_iter()
        .map(f32::from_le_bytes)
        .collect();
    let n = batch.len();
    let p = meta.dims;
    if let Some(m) = m {
        ensure!(
            m.rows == n as u64 && m.dims == p as u64 && m.plates == meta.plates.len() as u64,
            "{}: {} rows, {} dims, {} plates; the manifest says {}, {}, {}",
            dir.display(),
            n,
            p,
            meta.plates.len(),
            m.rows,
            m.dims,
            m.plates
        );
    }
    ensure!(
        y.len() == n * p,
        "{}: {} values, {} rows x {} dims expected (from {})",
        yp.display(),
        y.len(),
        n,
        p,
        bp.display()
    );
    ensure!(
        cov.len() == n,
        "{}: {} rows, {} has {}",
        cp.display(),
        cov.len(),
        bp.display(),
        n
    );
    if let Some(i) = y
        .iter()
        .position(|v| !v.is_finite() || v.abs() > MAX_ABS_COORD)
    {
        bail!(
            "{}: row {} holds {} (not a finite coordinate)",
            yp.display(),
            i / p.max(1),
            y[i]
        );
    }
    if let Some(i) = cov.iter().position(|v| !v.is_finite() || *v < 0.0) {
        bail!("{}: row {i} holds coverage {}", cp.display(), cov[i]);
    }
    if let Some(i) = batch.iter().position(|&b| b as usize >= meta.batches.len()) {
        bail!(
            "{}: row {i} has batch id {}, the meta names {} batches",
            bp.display(),
            batch[i],
            meta.batches.len()
        );
    }
    let w: Option<Vec<f32>> = if meta.feature_rows {
        let wp = dir.join(PROFILES);
        let w: Vec<f32> = words(&wp, &read_checked(dir, PROFILES, m)?)?
            .into_iter()
            .map(f32::from_le_bytes)
            .collect();
        let nv = meta.varying.len();
        ensure!(
            w.len() == n * nv,
            "{}: {} values, {} rows x {} features expected (from {})",
            wp.display(),
            w.len(),
            n,
            nv,
            bp.display()
        );
        if let Some(i) = w
            .iter()
            .position(|v| !v.is_finite() || v.abs() > MAX_ABS_COORD)
        {
            bail!(
                "{}: row {} holds {} (not a finite profile value)",
                wp.display(),
                i / nv.max(1),
                w[i]
            );
        }
        Some(w)
    } else {
        None
    };
    let with_profiles = |model: Model| -> Result<Model> {
        match w {
            Some(w) => model.with_feature_rows(w),
            None => Ok(model),
        }
    };
    for (id, r) in &meta.plates {
        ensure!(
            r.first_row
                .checked_add(r.rows)
                .is_some_and(|e| e <= n as u64),
            "{}: plate {id} spans rows {}..{}, the snapshot holds {n}",
            meta_path.display(),
            r.first_row,
            r.first_row.saturating_add(r.rows)
        );
    }
    if !use_stored || m.is_none() || meta.params.index_kind() != IndexKind::Hnsw {
        // Nothing stored to trust: every index is built from the rows.
        let n_batches = meta.batches.len();
        let model = Model::restore(meta, y, batch, cov)
            .and_then(with_profiles)
            .with_context(|| format!("{}", dir.display()))?;
        return Ok((model, vec![IndexRestore::Built; n_batches]));
    }
    let stored: Vec<StoredIndex> = (0..meta.batches.len())
        .map(|b| stored_index(dir, b, m))
        .collect();
    let (model, outcome) = Model::restore_with_indices(meta, y, batch, cov, stored)
        .with_context(|| format!("{}", dir.display()))?;
    let model = with_profiles(model).with_context(|| format!("{}", dir.display()))?;
    Ok((model, outcome))
}

/// Shapes and finiteness of the meta's arrays.
fn check_meta(m: &ModelMeta) -> Result<()> {
    let nf = m.features.len();
    let nv = m.varying.len();
    let p = m.dims;
    ensure!(p >= 1, "dims is 0");
    ensure!(
        m.scale.len() == nf && m.global_centre.len() == nf,
        "scale/global_centre lengths {}/{} differ from {nf} features",
        m.scale.len(),
        m.global_centre.len()
    );
    ensure!(
        m.varying.iter().all(|&f| f < nf),
        "a varying feature index is out of range"
    );
    ensure!(
        m.control_mad.is_empty() || m.control_mad.len() == nf,
        "control_mad has {} values for {nf} features",
        m.control_mad.len()
    );
    ensure!(
        m.pca_mean.len() == nv && m.pca_components.len() == nv * p,
        "PCA shapes do not match {nv} varying features x {p} dims"
    );
    let arrays: [(&str, &[f64]); 5] = [
        ("scale", &m.scale),
        ("global_centre", &m.global_centre),
        ("pca_mean", &m.pca_mean),
        ("pca_components", &m.pca_components),
        ("control_mad", &m.control_mad),
    ];
    for (name, a) in arrays {
        ensure!(
            a.iter().all(|v| v.is_finite()),
            "{name} holds a non-finite value"
        );
    }
    if let Some(w) = &m.pca_whitening {
        ensure!(
            w.iter().all(|v| v.is_finite()),
            "pca_whitening holds a non-finite value"
        );
    }
    for (b, pool) in &m.control_pool {
        ensure!(
            pool.len() % nv.max(1) == 0 && pool.iter().all(|v| v.is_finite() && *v >= 0.0),
            "control_pool of {b}: not whole rows of {nv} finite, non-negative deviations"
        );
    }
    for (b, g) in &m.batch_gain {
        ensure!(
            g.iter().all(|v| v.is_finite() && *v > 0.0),
            "batch_gain of {b} holds a non-finite or non-positive value"
        );
    }
    Ok(())
}

/// Check a log record's state change against the model it is applied to:
/// lengths, finite and bounded values, row ids in range.
pub fn check_delta(model: &Model, d: &PlateDelta) -> Result<()> {
    let p = model.meta().dims;
    ensure!(
        d.y.len() == d.plate_coverage.len() * p,
        "plate {}: {} coordinates for {} rows x {p} dims",
        d.plate,
        d.y.len(),
        d.plate_coverage.len()
    );
    if let Some(v) =
        d.y.iter()
            .find(|v| !v.is_finite() || v.abs() > MAX_ABS_COORD)
    {
        bail!(
            "plate {}: coordinate {v} is not finite or out of range",
            d.plate
        );
    }
    let nv = model.meta().varying.len();
    let want_w = if model.meta().feature_rows {
        d.plate_coverage.len() * nv
    } else {
        0
    };
    ensure!(
        d.w.len() == want_w,
        "plate {}: {} profile values, {want_w} expected ({} rows x {nv} features)",
        d.plate,
        d.w.len(),
        d.plate_coverage.len()
    );
    if let Some(v) =
        d.w.iter()
            .find(|v| !v.is_finite() || v.abs() > MAX_ABS_COORD)
    {
        bail!(
            "plate {}: profile value {v} is not finite or out of range",
            d.plate
        );
    }
    ensure!(
        d.control_dev.len() % nv.max(1) == 0,
        "plate {}: {} control deviations, not a whole number of rows of {nv} features",
        d.plate,
        d.control_dev.len()
    );
    if let Some(v) = d.control_dev.iter().find(|v| !v.is_finite() || **v < 0.0) {
        bail!("plate {}: control deviation {v}", d.plate);
    }
    let bad_cov = |v: &f32| !v.is_finite() || *v < 0.0;
    if let Some(v) = d.plate_coverage.iter().find(|v| bad_cov(v)) {
        bail!("plate {}: coverage {v}", d.plate);
    }
    for (j, a) in &d.coverage_updates {
        ensure!(
            (*j as usize) < model.len() && !bad_cov(a),
            "plate {}: coverage update ({j}, {a}) out of range (model has {} rows)",
            d.plate,
            model.len()
        );
    }
    Ok(())
}
