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
//! snapshot/y.<r>.f32, w.<r>.f32  rows r.. of y and w, when the rows are in segments
//! snapshot/manifest.json   length and 64-bit hash of each file above, rows, dims,
//!                          the segments' first rows
//! ```
//!
//! Rows are only ever appended to a model, so a snapshot reuses the
//! previous one's row files (hard links) and writes the rows added since
//! as a new segment ([`write_incremental`], [`plan_segments`]): its cost
//! follows the plates since the last snapshot, not the model's size.
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

use crate::method::model::{
    content_hash, content_hash_extend, IndexRestore, Model, ModelMeta, PlateDelta, StoredIndex,
    CONTENT_HASH_START,
};
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
    /// First rows of the row segments after the first (format 3; empty: the
    /// rows are one segment, `y.f32` and `w.f32`). See [`segment_file`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<u64>,
}

impl Manifest {
    /// The first rows of the row segments: `0`, then [`Manifest::segments`].
    pub fn segment_starts(&self) -> Vec<u64> {
        std::iter::once(0)
            .chain(self.segments.iter().copied())
            .collect()
    }
}

/// The file holding rows `start..` of a row array (`stem` = `y` or `w`):
/// `y.f32` for the segment that starts at row 0, `y.<start>.f32` after it.
pub fn segment_file(stem: &str, start: u64) -> String {
    if start == 0 {
        format!("{stem}.f32")
    } else {
        format!("{stem}.{start}.f32")
    }
}

/// A snapshot on disk that the next one may build on: its directory, its
/// (verified or just written) manifest, and the generation of the model it
/// holds.
#[derive(Debug, Clone)]
pub struct Base {
    /// The snapshot directory.
    pub dir: std::path::PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// The model's generation.
    pub generation: u64,
}

/// The row segments of a snapshot of `rows` rows that follows one of
/// `prev_rows` rows in segments starting at `prev` (`prev[0] == 0`), and how
/// many of them are the previous snapshot's files unchanged.
///
/// The rows added since are a new segment; then, while the segment before
/// the last is at most twice the last one, the two are merged (rewritten as
/// one). So the segments shrink geometrically from the first: there are
/// O(log n) of them, and a row is rewritten O(log n) times over the life of
/// a state instead of at every snapshot.
pub fn plan_segments(prev: &[u64], prev_rows: u64, rows: u64) -> (Vec<u64>, usize) {
    if prev.first() != Some(&0) || prev_rows == 0 || rows < prev_rows {
        return (vec![0], 0);
    }
    let mut starts = prev.to_vec();
    if rows > prev_rows {
        starts.push(prev_rows);
    }
    while starts.len() >= 2 {
        let l = starts.len() - 1;
        let (last, before) = (rows - starts[l], starts[l] - starts[l - 1]);
        if before <= 2 * last {
            starts.pop();
        } else {
            break;
        }
    }
    // All but the last segment end where they ended before; the last one
    // is unchanged only when no row was added and no merge happened.
    let unchanged_last = rows == prev_rows && starts.len() == prev.len();
    let kept = starts.len() - 1 + usize::from(unchanged_last);
    (starts, kept.min(prev.len()))
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
pub fn write(dir: &Path, model: &Model) -> Result<Manifest> {
    write_incremental(dir, model, None)
}

/// Whether the snapshot `base` holds a prefix of `model`'s rows, so its
/// row segments can be reused: the same generation, no more rows or
/// plates, the same dimensions and the profile files a model that keeps
/// profiles needs — and 16 rows spread over the prefix read back from its
/// files equal to the model's, bit for bit.
fn base_holds_prefix(base: &Base, model: &Model) -> Result<bool> {
    let m = &base.manifest;
    let p = model.meta().dims;
    if base.generation != model.meta().generation
        || m.rows > model.len() as u64
        || m.rows == 0
        || m.dims != p as u64
        || m.plates > model.meta().plates.len() as u64
    {
        return Ok(false);
    }
    let starts = m.segment_starts();
    let listed = |name: &str| m.files.iter().any(|f| f.name == name);
    let profiles = model.meta().feature_rows;
    if !starts
        .iter()
        .all(|&s| listed(&segment_file("y", s)) && (!profiles || listed(&segment_file("w", s))))
    {
        return Ok(false);
    }
    let y = model.rows_y();
    for t in 0..16u64 {
        let r = t * (m.rows - 1) / 15;
        let seg = starts.iter().rposition(|&s| s <= r).unwrap_or(0);
        let path = base.dir.join(segment_file("y", starts[seg]));
        let mut buf = vec![0u8; p * 4];
        let read = File::open(&path).and_then(|f| {
            use std::os::unix::fs::FileExt;
            f.read_exact_at(&mut buf, (r - starts[seg]) * p as u64 * 4)
        });
        if read.is_err() {
            return Ok(false);
        }
        let row = &y[r as usize * p..(r as usize + 1) * p];
        if le_bytes(row, f32::to_le_bytes) != buf {
            return Ok(false);
        }
    }
    Ok(true)
}

/// [`write`], reusing the row segments of the previous snapshot `base`
/// when it holds a prefix of the model's rows ([`base_holds_prefix`]):
/// those files are hard-linked (written again from the model where a link
/// fails) with their manifest entries, and only the new rows' segment is written — plus the
/// small files (meta, batch ids, coverage, stored indices), which are
/// rewritten whole. A snapshot so costs the rows added since the last one
/// instead of the whole model ([`plan_segments`]).
pub fn write_incremental(dir: &Path, model: &Model, base: Option<&Base>) -> Result<Manifest> {
    let rows = model.len() as u64;
    let p = model.meta().dims;
    let nv = model.meta().varying.len();
    let profiles = model.meta().feature_rows;
    let base = match base {
        Some(b) => match base_holds_prefix(b, model) {
            Ok(true) => Some(b),
            Ok(false) => None,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "previous snapshot not reused");
                None
            }
        },
        None => None,
    };
    let (starts, kept) = match base {
        Some(b) => plan_segments(&b.manifest.segment_starts(), b.manifest.rows, rows),
        None => (vec![0], 0),
    };
    let mut sums = Vec::new();
    put(
        dir,
        &mut sums,
        FILES[0].into(),
        &serde_json::to_vec(model.meta())?,
    )?;
    let mut arrays = vec![("y", p, model.rows_y())];
    if profiles {
        arrays.push(("w", nv, model.rows_w()));
    }
    for (n_array, &(stem, width, values)) in arrays.iter().enumerate() {
        for (i, &start) in starts.iter().enumerate() {
            let end = starts.get(i + 1).copied().unwrap_or(rows);
            let name = segment_file(stem, start);
            if let Some(b) = base.filter(|_| i < kept) {
                let sum = b.manifest.files.iter().find(|f| f.name == name);
                if let Some(sum) = sum {
                    // A second name for the same (already synced) data.
                    if std::fs::hard_link(b.dir.join(&name), dir.join(&name)).is_ok() {
                        sums.push(sum.clone());
                        continue;
                    }
                }
            }
            let (from, to) = (start as usize * width, end as usize * width);
            let part = values
                .get(from..to)
                .with_context(|| format!("internal: rows {start}..{end} of {stem} out of range"))?;
            put(dir, &mut sums, name, &le_bytes(part, f32::to_le_bytes))?;
        }
        if n_array == 0 {
            // The files' order of a one-segment snapshot, as format 2 wrote it.
            put(
                dir,
                &mut sums,
                FILES[2].into(),
                &le_bytes(model.rows_batch(), u32::to_le_bytes),
            )?;
            put(
                dir,
                &mut sums,
                FILES[3].into(),
                &le_bytes(model.rows_coverage(), f32::to_le_bytes),
            )?;
        }
    }
    // One serialised index in memory at a time.
    for b in 0..model.meta().batches.len() {
        if let Some(bytes) = model.index_bytes(b)? {
            put(dir, &mut sums, index_file(b), &bytes)?;
        }
    }
    let segments = starts[1..].to_vec();
    let manifest = Manifest {
        format: if segments.is_empty() { 2 } else { 3 },
        rows,
        dims: p as u64,
        plates: model.meta().plates.len() as u64,
        files: sums,
        segments,
    };
    write_synced(&dir.join(MANIFEST), &serde_json::to_vec_pretty(&manifest)?)?;
    sync_dir(dir)?;
    Ok(manifest)
}

/// Write one file of a snapshot, fsynced, and note its length and hash.
fn put(dir: &Path, sums: &mut Vec<FileSum>, name: String, bytes: &[u8]) -> Result<()> {
    let t = std::time::Instant::now();
    write_synced(&dir.join(&name), bytes)?;
    let written = t.elapsed().as_secs_f64();
    let hash = content_hash(bytes);
    tracing::debug!(
        file = %name,
        bytes = bytes.len(),
        write_s = written,
        hash_s = t.elapsed().as_secs_f64() - written,
        "snapshot file written"
    );
    sums.push(FileSum {
        name,
        len: bytes.len() as u64,
        hash,
    });
    Ok(())
}

/// Read a snapshot file, checked against its manifest entry.
fn read_checked(dir: &Path, name: &str, manifest: Option<&Manifest>) -> Result<Vec<u8>> {
    let path = dir.join(name);
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    if let Some(m) = manifest {
        let sum = listed(m, &path, name, bytes.len() as u64)?;
        check_hash(&path, content_hash(&bytes), sum)?;
    }
    Ok(bytes)
}

/// `name`'s entry in the manifest, whose length must be `len`.
fn listed<'a>(m: &'a Manifest, path: &Path, name: &str, len: u64) -> Result<&'a FileSum> {
    let sum = m
        .files
        .iter()
        .find(|f| f.name == name)
        .with_context(|| format!("{}: not listed in {MANIFEST}", path.display()))?;
    ensure!(
        len == sum.len,
        "{}: {len} bytes, the manifest says {}",
        path.display(),
        sum.len
    );
    Ok(sum)
}

fn check_hash(path: &Path, hash: u64, sum: &FileSum) -> Result<()> {
    ensure!(
        hash == sum.hash,
        "{}: checksum mismatch (the file is damaged)",
        path.display()
    );
    Ok(())
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

/// The first rows of a manifest's row segments (`[0]` for one segment),
/// checked: ascending, inside the rows.
fn segment_starts(dir: &Path, m: &Manifest) -> Result<Vec<u64>> {
    let starts = m.segment_starts();
    ensure!(
        starts.windows(2).all(|w| w[0] < w[1]) && starts.last().is_some_and(|&l| l < m.rows.max(1)),
        "{}: row segments {:?} are not ascending inside {} rows",
        dir.join(MANIFEST).display(),
        m.segments,
        m.rows
    );
    Ok(starts)
}

/// The file holding row `row` of a row array.
fn file_of_row(dir: &Path, stem: &str, m: Option<&Manifest>, row: u64) -> std::path::PathBuf {
    let start = m
        .and_then(|m| m.segment_starts().into_iter().filter(|&s| s <= row).max())
        .unwrap_or(0);
    dir.join(segment_file(stem, start))
}

/// A row array (`stem`: `y` or `w`, `width` values a row) from its
/// segments, each checked against the manifest and against its row range.
fn read_segments(dir: &Path, stem: &str, width: usize, m: Option<&Manifest>) -> Result<Vec<f32>> {
    let mut out = Vec::new();
    let Some(m) = m.filter(|m| !m.segments.is_empty()) else {
        read_rows_into(&mut out, dir, &segment_file(stem, 0), m, None)?;
        return Ok(out);
    };
    let starts = segment_starts(dir, m)?;
    for (i, &start) in starts.iter().enumerate() {
        let end = starts.get(i + 1).copied().unwrap_or(m.rows);
        let name = segment_file(stem, start);
        read_rows_into(&mut out, dir, &name, Some(m), Some((start, end, width)))?;
    }
    Ok(out)
}

/// Bytes read at a time by [`read_rows_into`] (a multiple of 4).
const READ_CHUNK: usize = 1 << 22;

/// Append the little-endian f32 values of snapshot file `name` to `out`,
/// read in [`READ_CHUNK`] parts and hashed as they pass: only `out` and one
/// chunk are in memory, where reading the file whole and then decoding it
/// held the file twice (2.4 GB for 1M rows x 300 features; on these
/// machines first-touching fresh memory is most of a restart's time).
/// Checked, as [`read_checked`] checks a whole file: the length and hash
/// against the manifest (when there is one), and `rows` = `(first, end,
/// width)`: the length a segment of those rows must have.
fn read_rows_into(
    out: &mut Vec<f32>,
    dir: &Path,
    name: &str,
    manifest: Option<&Manifest>,
    rows: Option<(u64, u64, usize)>,
) -> Result<()> {
    use std::io::Read;
    let path = dir.join(name);
    let mut file = File::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let len = file
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    let sum = manifest.map(|m| listed(m, &path, name, len)).transpose()?;
    if let Some((start, end, width)) = rows {
        ensure!(
            (end - start).checked_mul(width as u64 * 4) == Some(len),
            "{}: {len} bytes, rows {start}..{end} x {width} values expected",
            path.display()
        );
    }
    ensure!(
        len % 4 == 0,
        "{}: {len} bytes, not a whole number of 4-byte values",
        path.display()
    );
    let values =
        usize::try_from(len / 4).with_context(|| format!("{}: too large", path.display()))?;
    out.try_reserve_exact(values)
        .with_context(|| format!("{}: cannot hold {values} values", path.display()))?;
    let mut chunk = vec![0u8; READ_CHUNK.min(len as usize)];
    let mut hash = CONTENT_HASH_START;
    let mut left = len as usize;
    while left > 0 {
        let part = &mut chunk[..left.min(READ_CHUNK)];
        file.read_exact(part)
            .with_context(|| format!("cannot read {}", path.display()))?;
        hash = content_hash_extend(hash, part);
        out.extend(
            part.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
        left -= part.len();
    }
    if let Some(sum) = sum {
        check_hash(&path, hash, sum)?;
    }
    Ok(())
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
    let y = read_segments(dir, "y", meta.dims, m)?;
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
            file_of_row(dir, "y", m, (i / p.max(1)) as u64).display(),
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
        let nv = meta.varying.len();
        let w = read_segments(dir, "w", nv, m)?;
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
                file_of_row(dir, "w", m, (i / nv.max(1)) as u64).display(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A row file longer than one read chunk: the values and the hash are
    /// those of the whole file; a flipped byte in the last chunk, a length
    /// the manifest does not give, or a segment of the wrong size are
    /// refused, naming the file.
    #[test]
    fn a_row_file_read_in_chunks_is_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let values: Vec<f32> = (0..READ_CHUNK / 4 + 5)
            .map(|i| i as f32 * 0.5 - 7.0)
            .collect();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(dir.path().join("w.f32"), &bytes).unwrap();
        let manifest = |len: u64, hash: u64| Manifest {
            format: 2,
            rows: values.len() as u64,
            dims: 1,
            plates: 0,
            files: vec![FileSum {
                name: "w.f32".into(),
                len,
                hash,
            }],
            segments: vec![],
        };
        let good = manifest(bytes.len() as u64, content_hash(&bytes));
        let read = |m: Option<&Manifest>, rows| {
            let mut out = vec![1.5f32];
            read_rows_into(&mut out, dir.path(), "w.f32", m, rows).map(|_| out)
        };
        let n = values.len() as u64;
        for (m, rows) in [
            (None, None),
            (Some(&good), None),
            (Some(&good), Some((3, n + 3, 1))),
        ] {
            let out = read(m, rows).unwrap();
            assert_eq!(out[0], 1.5, "appended after what was there");
            assert_eq!(&out[1..], &values[..]);
        }
        let refused = |m: Option<&Manifest>, rows, what: &str| {
            let e = format!("{:#}", read(m, rows).unwrap_err());
            assert!(e.contains("w.f32") && e.contains(what), "{e}");
        };
        refused(
            Some(&manifest(bytes.len() as u64 + 4, good.files[0].hash)),
            None,
            "the manifest says",
        );
        refused(Some(&good), Some((0, n - 1, 1)), "rows 0..");
        let mut flipped = bytes.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 0x10;
        std::fs::write(dir.path().join("w.f32"), &flipped).unwrap();
        refused(Some(&good), None, "checksum mismatch");
        assert_eq!(
            read(None, None).unwrap().len(),
            values.len() + 1,
            "no manifest: not checked"
        );
    }

    /// Snapshots after plates of the given sizes: the segments each one
    /// has, and the rows each one writes.
    fn history(reference: u64, plates: &[u64]) -> Vec<(Vec<u64>, u64)> {
        let (mut starts, mut rows) = (vec![0u64], reference);
        let mut out = Vec::new();
        for &add in plates {
            let next = rows + add;
            let (s, kept) = plan_segments(&starts, rows, next);
            let first_written = if kept < s.len() { s[kept] } else { next };
            out.push((s.clone(), next - first_written));
            starts = s;
            rows = next;
        }
        out
    }

    proptest! {
        /// Hashing in parts gives the hash of the whole.
        #[test]
        fn prop_hash_in_parts_is_the_hash_of_the_whole(
            bytes in prop::collection::vec(any::<u8>(), 0..300),
            cut in any::<prop::sample::Index>(),
        ) {
            let at = cut.index(bytes.len() + 1);
            let (a, b) = bytes.split_at(at);
            prop_assert_eq!(content_hash_extend(content_hash(a), b), content_hash(&bytes));
        }

        /// The segments cover the rows in order; the kept ones are the
        /// previous snapshot's, unchanged; their number stays logarithmic
        /// and a row is rewritten a logarithmic number of times.
        #[test]
        fn prop_segments_are_kept_or_rewritten_and_stay_few(
            reference in 0u64..5_000,
            plates in prop::collection::vec(0u64..800, 1..120),
        ) {
            let (mut prev, mut rows) = (vec![0u64], reference);
            let mut written = 0u64;
            for &add in &plates {
                let next = rows + add;
                let (s, kept) = plan_segments(&prev, rows, next);
                prop_assert_eq!(s[0], 0);
                prop_assert!(s.windows(2).all(|w| w[0] < w[1]));
                prop_assert!(s.last().is_some_and(|&l| l < next.max(1)));
                prop_assert!(kept <= s.len() && kept <= prev.len());
                let end = |v: &[u64], i: usize, n: u64| v.get(i + 1).copied().unwrap_or(n);
                for i in 0..kept {
                    prop_assert_eq!(s[i], prev[i]);
                    prop_assert_eq!(end(&s, i, next), end(&prev, i, rows), "segment {} changed", i);
                }
                // Geometric: each segment is over twice the next one.
                for i in 0..s.len().saturating_sub(1) {
                    let (a, b) = (end(&s, i, next) - s[i], end(&s, i + 1, next) - s[i + 1]);
                    prop_assert!(a > 2 * b, "segments {:?} of {} rows", s, next);
                }
                prop_assert!(s.len() as f64 <= 2.0 + (next.max(2) as f64).log2());
                written += next - if kept < s.len() { s[kept] } else { next };
                prev = s;
                rows = next;
            }
            let added: u64 = plates.iter().sum();
            let bound = (reference + added) as f64 * (2.0 + ((reference + added).max(2) as f64).log2());
            prop_assert!((written as f64) <= bound, "{} rows written for {} added", written, added);
        }
    }

    /// A stream of 384-row plates after a 1M-row reference: a snapshot
    /// every 50 plates writes the 19,200 rows since the last one (or a few
    /// times that when segments merge), not the reference — until the
    /// stream's rows reach half the reference, when one snapshot rewrites
    /// everything (the doubling that keeps the segments few).
    #[test]
    fn snapshots_after_a_large_reference_write_the_new_rows() {
        let h = history(1_000_000, &[19_200; 40]);
        assert!(h.iter().all(|(s, _)| s[0] == 0 && s.len() <= 8), "{h:?}");
        assert_eq!(h[0].1, 19_200);
        let full: Vec<usize> = (0..h.len()).filter(|&i| h[i].1 >= 1_000_000).collect();
        assert_eq!(full.len(), 1, "{h:?}");
        // Up to then, at most the stream's own rows.
        assert!(h[..full[0]]
            .iter()
            .all(|x| x.1 <= 19_200 * (full[0] as u64 + 1)));
        let before: u64 = h[..full[0]].iter().map(|x| x.1).sum();
        let added = 19_200 * full[0] as u64;
        assert!(
            before <= added * 4,
            "{before} rows written for {added} added"
        );
        // From an empty or missing base: everything is written.
        assert_eq!(plan_segments(&[0], 0, 500), (vec![0], 0));
        assert_eq!(plan_segments(&[], 10, 500), (vec![0], 0));
        // Nothing added: every segment kept.
        assert_eq!(plan_segments(&[0, 900], 1000, 1000), (vec![0, 900], 2));
    }
}
