//! Durable daemon state: a snapshot plus a write-ahead log of plate deltas.
//!
//! ```text
//! STATE_DIR/
//!   snapshot/meta.json      ModelMeta (params, basis, batches, plates)
//!   snapshot/y.f32          corrected neighbour-space rows, little-endian f32
//!   snapshot/batch.u32      batch id per row
//!   snapshot/coverage.f32   coverage per row
//!   wal.log                 PlateDelta records appended since the snapshot
//! ```
//!
//! Every plate's [`PlateDelta`] is appended to the log and fsynced *before*
//! its outputs are written and its input acknowledged, so a crash at any
//! point loses nothing: on restart the snapshot is loaded and the log
//! replayed through [`Model::apply`] (idempotent per plate id). A record is
//! `len: u32 | hash: u64 | json`; a torn or corrupt tail (a crash mid-append)
//! ends the replay there and is truncated. Every `snapshot_every` plates the
//! whole model is written to `snapshot.tmp/`, fsynced, swapped in by rename
//! and the log emptied — the only step whose cost grows with the model.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::method::model::{content_hash, Model, ModelMeta, PlateDelta};

/// The state directory.
pub struct StateDir {
    dir: PathBuf,
    wal: Option<File>,
    since_snapshot: usize,
}

fn write_f32(path: &Path, v: &[f32]) -> Result<()> {
    let mut bytes = Vec::with_capacity(v.len() * 4);
    for x in v {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    write_synced(path, &bytes)
}

fn write_u32(path: &Path, v: &[u32]) -> Result<()> {
    let mut bytes = Vec::with_capacity(v.len() * 4);
    for x in v {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    write_synced(path, &bytes)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn read_words(path: &Path) -> Result<Vec<[u8; 4]>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    anyhow::ensure!(bytes.len() % 4 == 0, "{} is truncated", path.display());
    Ok(bytes
        .chunks_exact(4)
        .map(|c| [c[0], c[1], c[2], c[3]])
        .collect())
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = File::open(dir) {
        let _ = f.sync_all();
    }
}

impl StateDir {
    /// Open (creating) a state directory.
    pub fn open(dir: &Path) -> Result<StateDir> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create state directory {}", dir.display()))?;
        Ok(StateDir {
            dir: dir.to_path_buf(),
            wal: None,
            since_snapshot: 0,
        })
    }

    fn snapshot_dir(&self) -> PathBuf {
        self.dir.join("snapshot")
    }

    fn wal_path(&self) -> PathBuf {
        self.dir.join("wal.log")
    }

    /// Restore the model: the snapshot (or `snapshot.old` after a crash
    /// mid-swap) plus the log. `None` when the directory holds no snapshot.
    /// Returns the model and the number of log records replayed.
    pub fn restore(&mut self) -> Result<Option<(Model, usize)>> {
        let mut snap = self.snapshot_dir();
        if !snap.join("meta.json").exists() {
            let old = self.dir.join("snapshot.old");
            if old.join("meta.json").exists() {
                snap = old;
            } else {
                return Ok(None);
            }
        }
        let meta = parse_meta(
            &std::fs::read(snap.join("meta.json")).context("cannot read snapshot meta.json")?,
        )?;
        let y = read_words(&snap.join("y.f32"))?
            .into_iter()
            .map(f32::from_le_bytes)
            .collect();
        let batch = read_words(&snap.join("batch.u32"))?
            .into_iter()
            .map(u32::from_le_bytes)
            .collect();
        let cov = read_words(&snap.join("coverage.f32"))?
            .into_iter()
            .map(f32::from_le_bytes)
            .collect();
        let mut model = Model::restore(meta, y, batch, cov)?;
        let (records, valid_len) = self.read_wal()?;
        for d in &records {
            model.apply(d)?;
        }
        // Drop a torn tail so new records append after the last good one.
        if let Ok(f) = OpenOptions::new().write(true).open(self.wal_path()) {
            f.set_len(valid_len)
                .context("cannot truncate the torn log tail")?;
        }
        self.since_snapshot = records.len();
        Ok(Some((model, records.len())))
    }

    /// All intact log records and the byte length they span.
    pub fn read_wal(&self) -> Result<(Vec<PlateDelta>, u64)> {
        let mut bytes = Vec::new();
        match File::open(self.wal_path()) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes).context("cannot read wal.log")?;
            }
            Err(_) => return Ok((Vec::new(), 0)),
        }
        let mut out = Vec::new();
        let mut pos = 0usize;
        while pos + 12 <= bytes.len() {
            let len =
                u32::from_le_bytes([bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]])
                    as usize;
            let mut h = [0u8; 8];
            h.copy_from_slice(&bytes[pos + 4..pos + 12]);
            let end = pos + 12 + len;
            if end > bytes.len() {
                tracing::warn!(
                    offset = pos,
                    "write-ahead log: torn record at the tail ignored"
                );
                break;
            }
            let body = &bytes[pos + 12..end];
            if content_hash(body) != u64::from_le_bytes(h) {
                tracing::warn!(
                    offset = pos,
                    "write-ahead log: corrupt record at the tail ignored"
                );
                break;
            }
            match serde_json::from_slice::<PlateDelta>(body) {
                Ok(d) => out.push(d),
                Err(e) => {
                    tracing::warn!(offset = pos, error = %e, "write-ahead log: undecodable record ignored");
                    break;
                }
            }
            pos = end;
        }
        Ok((out, pos as u64))
    }

    /// Append a delta and fsync it.
    pub fn append(&mut self, delta: &PlateDelta) -> Result<()> {
        if self.wal.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.wal_path())
                .context("cannot open wal.log")?;
            self.wal = Some(f);
        }
        let body = serde_json::to_vec(delta)?;
        let mut rec = Vec::with_capacity(body.len() + 12);
        rec.extend_from_slice(&(body.len() as u32).to_le_bytes());
        rec.extend_from_slice(&content_hash(&body).to_le_bytes());
        rec.extend_from_slice(&body);
        if let Some(f) = self.wal.as_mut() {
            f.write_all(&rec)
                .and_then(|_| f.sync_data())
                .context("cannot append to wal.log")?;
        }
        self.since_snapshot += 1;
        Ok(())
    }

    /// Plates logged since the last snapshot.
    pub fn since_snapshot(&self) -> usize {
        self.since_snapshot
    }

    /// Write a full snapshot and empty the log.
    pub fn snapshot(&mut self, model: &Model) -> Result<()> {
        let tmp = self.dir.join("snapshot.tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).context("cannot create snapshot.tmp")?;
        write_synced(&tmp.join("meta.json"), &serde_json::to_vec(model.meta())?)?;
        write_f32(&tmp.join("y.f32"), model.rows_y())?;
        write_u32(&tmp.join("batch.u32"), model.rows_batch())?;
        write_f32(&tmp.join("coverage.f32"), model.rows_coverage())?;
        sync_dir(&tmp);
        let snap = self.snapshot_dir();
        let old = self.dir.join("snapshot.old");
        let _ = std::fs::remove_dir_all(&old);
        if snap.exists() {
            std::fs::rename(&snap, &old).context("cannot move the old snapshot aside")?;
        }
        std::fs::rename(&tmp, &snap).context("cannot install the new snapshot")?;
        sync_dir(&self.dir);
        let _ = std::fs::remove_dir_all(&old);
        self.wal = None;
        write_synced(&self.wal_path(), &[])?;
        self.since_snapshot = 0;
        Ok(())
    }
}

/// Parse a snapshot's `meta.json`. States written before `trust_rule`
/// existed were corrected with the kernel-mass test: they restore with
/// `trust_rule = "mass"`; states written before `gain_shrinkage` existed
/// shrank new batches' gains with weight 1 and restore with it. A restarted
/// daemon so keeps a feed's semantics (a new state gets the current
/// defaults).
fn parse_meta(bytes: &[u8]) -> Result<ModelMeta> {
    let mut v: serde_json::Value =
        serde_json::from_slice(bytes).context("snapshot meta.json is corrupt")?;
    if let Some(p) = v.get_mut("params").and_then(|p| p.as_object_mut()) {
        p.entry("trust_rule")
            .or_insert_with(|| serde_json::Value::from("mass"));
        p.entry("gain_shrinkage")
            .or_insert_with(|| serde_json::Value::from(1.0));
    }
    serde_json::from_value(v).context("snapshot meta.json is corrupt")
}
