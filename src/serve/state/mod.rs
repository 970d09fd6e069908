//! Durable daemon state: a snapshot plus a write-ahead log of plate deltas.
//!
//! ```text
//! STATE_DIR/
//!   FORMAT                  "balans-state 2": snapshots here carry a manifest
//!   snapshot/               the model at the last checkpoint (see [`snapshot`])
//!   wal.log                 PlateDelta records appended since the snapshot (see [`wal`])
//! ```
//!
//! Every plate's [`PlateDelta`] is appended to the log and fsynced *before*
//! its outputs are written and its input acknowledged, so a crash at any
//! point loses nothing: on restart the snapshot is loaded and verified, and
//! the log replayed through [`Model::apply`]. Each record carries the
//! plate's index in the model; a record whose plate is already in the
//! snapshot (a crash between installing a snapshot and emptying the log) is
//! skipped, a gap is refused. Every `snapshot_every` plates the whole model
//! is written to `snapshot.tmp/`, fsynced, swapped in by rename and the log
//! emptied. Rows are only ever appended, so a snapshot reuses the previous
//! one's row segments (hard links) and writes the rows added since, plus
//! the small files ([`snapshot::write_incremental`]): its cost follows the
//! plates since the last one, not the model's size.
//!
//! What the restore does with damage (`balans state check` shows it,
//! `balans state repair` acts on it):
//! - a torn record at the log's tail (a crash mid-append, nothing intact
//!   after it): truncated with a warning, the file and directory fsynced;
//! - a damaged record with intact records after it, a gap in the
//!   sequence, or a record with non-finite values: the restore fails with
//!   an error naming `wal.log` and the byte offset — nothing is dropped
//!   silently;
//! - a damaged or inconsistent snapshot, or a directory that holds data
//!   (a log, a `FORMAT` file, part of a snapshot) but no complete
//!   snapshot: the restore fails naming the file; it never starts over.
//!
//! Limit: a log cut *exactly* at a record boundary, losing only whole
//! records at its end, looks like a log whose next append never happened;
//! it cannot be told from the log alone.

pub mod check;
pub mod snapshot;
pub mod wal;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::method::model::{Lookup, Model, ModelMeta, PlateDelta};

use self::snapshot::{sync_dir, write_synced};
use self::wal::{Damage, Record};

/// Name of the file that marks a state directory written with checksums.
const FORMAT: &str = "FORMAT";
/// Its content.
const FORMAT_TEXT: &[u8] = b"balans-state 2\n";

/// The state directory.
pub struct StateDir {
    dir: PathBuf,
    wal: Option<File>,
    since_snapshot: usize,
    /// Plate index of the next record (when no model is given to append).
    next_seq: u64,
    /// Whether a snapshot exists (restored or written).
    has_snapshot: bool,
    /// The snapshot this directory restored or last wrote, which the next
    /// one builds on ([`snapshot::write_incremental`]).
    base: Option<snapshot::Base>,
}

/// A log record that cannot be applied: where and why.
#[derive(Debug, Clone)]
pub struct ReplayError {
    /// Byte offset of the record in `wal.log`.
    pub offset: u64,
    /// Why.
    pub message: String,
}

/// Apply the log's records to the snapshot's model, in order. A record
/// whose plate index is below the model's plate count must be a plate the
/// model holds (same id and content: written before a snapshot that
/// already includes it) and is skipped; one above it means records are
/// missing. Values are checked ([`snapshot::check_delta`]) before they are
/// applied. Returns the number of records applied.
pub fn replay(model: &mut Model, records: &[Record]) -> std::result::Result<usize, ReplayError> {
    let mut applied = 0;
    for r in records {
        let err = |message: String| ReplayError {
            offset: r.offset,
            message,
        };
        let d = &r.delta;
        if let Some(seq) = r.seq {
            let have = model.meta().plates.len() as u64;
            if seq < have {
                match model.lookup(&d.plate, d.content_hash) {
                    Lookup::Replay(_) => continue,
                    _ => {
                        return Err(err(format!(
                            "record of plate {} says plate index {seq}, but the model already holds {have} plates and not this one",
                            d.plate
                        )))
                    }
                }
            }
            if seq > have {
                return Err(err(format!(
                    "record of plate {} says plate index {seq}, {have} expected: {} record(s) are missing before it",
                    d.plate,
                    seq - have
                )));
            }
        }
        snapshot::check_delta(model, d).map_err(|e| err(format!("{e:#}")))?;
        let before = model.meta().plates.len();
        model
            .apply(d)
            .map_err(|e| err(format!("cannot apply plate {}: {e:#}", d.plate)))?;
        if model.meta().plates.len() > before {
            applied += 1;
        }
    }
    Ok(applied)
}

/// Where the snapshot to restore is: `snapshot/`, or `snapshot.old/` after
/// a crash between the two renames of a swap; `None` for a directory that
/// holds nothing. Refuses a directory that holds data but no complete
/// snapshot.
pub fn locate_snapshot(dir: &Path) -> Result<Option<PathBuf>> {
    let snap = dir.join("snapshot");
    let old = dir.join("snapshot.old");
    if snap.is_dir() {
        if !snap.join("meta.json").exists() {
            bail!(
                "{} is missing: the snapshot is incomplete, so the state cannot be restored \
                 (refusing to start over; see `balans state check --state-dir {}`)",
                snap.join("meta.json").display(),
                dir.display()
            );
        }
        return Ok(Some(snap));
    }
    if old.join("meta.json").exists() {
        return Ok(Some(old));
    }
    let wal_len = std::fs::metadata(dir.join("wal.log")).map_or(0, |m| m.len());
    if wal_len > 0 || dir.join(FORMAT).exists() || old.exists() {
        bail!(
            "state directory {} holds data (wal.log: {wal_len} bytes) but no snapshot \
             ({} is missing): refusing to start over and lose it; see `balans state check --state-dir {}`",
            dir.display(),
            snap.join("meta.json").display(),
            dir.display()
        );
    }
    Ok(None)
}

/// Does the directory say its snapshots carry manifests?
pub fn requires_manifest(dir: &Path) -> bool {
    dir.join(FORMAT).exists()
}

/// The log's bytes (empty when there is none).
pub fn read_log(path: &Path) -> Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Truncate the log to `len` bytes, fsyncing the file and its directory.
pub fn truncate_log(path: &Path, len: u64) -> Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    f.set_len(len)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot truncate {} to {len} bytes", path.display()))?;
    if let Some(d) = path.parent() {
        sync_dir(d)?;
    }
    Ok(())
}

impl StateDir {
    /// Open (creating) a state directory. A `snapshot.tmp/` left by a
    /// snapshot that failed or was interrupted is removed.
    pub fn open(dir: &Path) -> Result<StateDir> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create state directory {}", dir.display()))?;
        let s = StateDir {
            dir: dir.to_path_buf(),
            wal: None,
            since_snapshot: 0,
            next_seq: 0,
            has_snapshot: false,
            base: None,
        };
        s.remove_stale_tmp();
        Ok(s)
    }

    fn snapshot_dir(&self) -> PathBuf {
        self.dir.join("snapshot")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.dir.join("snapshot.tmp")
    }

    fn wal_path(&self) -> PathBuf {
        self.dir.join("wal.log")
    }

    /// Remove a `snapshot.tmp/` directory (only a directory: anything
    /// else there is not ours, and makes snapshots fail until removed).
    fn remove_stale_tmp(&self) {
        let tmp = self.tmp_dir();
        if tmp.is_dir() {
            match std::fs::remove_dir_all(&tmp) {
                Ok(()) => tracing::warn!(path = %tmp.display(), "removed an unfinished snapshot"),
                Err(e) => {
                    tracing::warn!(path = %tmp.display(), error = %e, "cannot remove an unfinished snapshot")
                }
            }
        }
    }

    /// Restore the model: the verified snapshot plus the log (see the
    /// module doc for what is refused). `None` when the directory holds
    /// nothing. Returns the model and the number of log records applied.
    pub fn restore(&mut self) -> Result<Option<(Model, usize)>> {
        let Some(snap) = locate_snapshot(&self.dir)? else {
            return Ok(None);
        };
        let mut model = snapshot::read(&snap, requires_manifest(&self.dir))?;
        // The verified snapshot's manifest: the next snapshot reuses its
        // row segments (after checking they still hold the model's rows).
        self.base = std::fs::read(snap.join(snapshot::MANIFEST))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .map(|manifest| snapshot::Base {
                dir: snap.clone(),
                manifest,
                generation: model.meta().generation,
            });
        let path = self.wal_path();
        let bytes = read_log(&path)?;
        let scan = wal::scan(&bytes);
        if let Some(Damage::Corrupt {
            offset,
            reason,
            next_valid,
        }) = &scan.damage
        {
            bail!(
                "{}: damaged record at byte offset {offset} ({reason}), with intact records after it \
                 (next at offset {next_valid}): refusing to drop them. Inspect with `balans state check \
                 --state-dir {dir}`; `balans state repair --state-dir {dir}` truncates the log there",
                path.display(),
                dir = self.dir.display()
            );
        }
        let applied = replay(&mut model, &scan.records).map_err(|e| {
            anyhow::anyhow!(
                "{}: record at byte offset {}: {}. Inspect with `balans state check --state-dir {dir}`; \
                 `balans state repair --state-dir {dir}` truncates the log there",
                path.display(),
                e.offset,
                e.message,
                dir = self.dir.display()
            )
        })?;
        if let Some(Damage::TornTail { offset, reason }) = &scan.damage {
            tracing::warn!(
                file = %path.display(),
                offset,
                bytes = scan.file_len - offset,
                reason = %reason,
                "write-ahead log: torn record at the tail (an interrupted append) truncated"
            );
            truncate_log(&path, *offset)?;
        }
        self.since_snapshot = applied;
        self.next_seq = model.meta().plates.len() as u64;
        self.has_snapshot = true;
        Ok(Some((model, applied)))
    }

    /// Append a delta and fsync it. `model`: the model the delta applies
    /// to (its plate count is the record's plate index). When the
    /// directory has no snapshot yet (a model bootstrapped from its first
    /// plate) one is written first, so the log has a base to restore onto;
    /// if that fails it is retried at the next append (like a periodic
    /// snapshot, not fatal), and until one succeeds a restart refuses the
    /// log ([`locate_snapshot`]; `balans state repair` moves it aside).
    pub fn append(&mut self, model: Option<&Model>, delta: &PlateDelta) -> Result<()> {
        if let (false, Some(m)) = (self.has_snapshot, model) {
            if let Err(e) = self.snapshot(m) {
                tracing::warn!(
                    error = %format!("{e:#}"),
                    "cannot write the new model's first snapshot (retried at the next plate)"
                );
            }
        }
        let seq = model.map_or(self.next_seq, |m| m.meta().plates.len() as u64);
        if self.wal.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.wal_path())
                .context("cannot open wal.log")?;
            self.wal = Some(f);
        }
        let rec = wal::encode(seq, delta)?;
        if let Some(f) = self.wal.as_mut() {
            f.write_all(&rec)
                .and_then(|_| f.sync_data())
                .context("cannot append to wal.log")?;
        }
        self.since_snapshot += 1;
        self.next_seq = seq + 1;
        Ok(())
    }

    /// Plates logged since the last snapshot.
    pub fn since_snapshot(&self) -> usize {
        self.since_snapshot
    }

    /// Write a full snapshot and empty the log. A snapshot that fails
    /// removes its `snapshot.tmp/` (best effort), so a full disk is not
    /// made fuller; the log still holds every plate.
    pub fn snapshot(&mut self, model: &Model) -> Result<()> {
        self.remove_stale_tmp();
        let tmp = self.tmp_dir();
        std::fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let written = snapshot::write_incremental(&tmp, model, self.base.as_ref())
            .and_then(|m| self.install(&tmp).map(|_| m));
        let manifest = match written {
            Ok(m) => m,
            Err(e) => {
                if tmp.is_dir() {
                    let _ = std::fs::remove_dir_all(&tmp);
                }
                return Err(e);
            }
        };
        self.base = Some(snapshot::Base {
            dir: self.snapshot_dir(),
            manifest,
            generation: model.meta().generation,
        });
        self.wal = None;
        write_synced(&self.wal_path(), &[])?;
        self.since_snapshot = 0;
        self.next_seq = model.meta().plates.len() as u64;
        self.has_snapshot = true;
        Ok(())
    }

    /// Swap a written `snapshot.tmp/` in, and mark the directory's format.
    fn install(&self, tmp: &Path) -> Result<()> {
        let snap = self.snapshot_dir();
        let old = self.dir.join("snapshot.old");
        if old.exists() {
            std::fs::remove_dir_all(&old).context("cannot remove snapshot.old")?;
        }
        if snap.exists() {
            std::fs::rename(&snap, &old).context("cannot move the old snapshot aside")?;
        }
        std::fs::rename(tmp, &snap).context("cannot install the new snapshot")?;
        sync_dir(&self.dir)?;
        let _ = std::fs::remove_dir_all(&old);
        let format = self.dir.join(FORMAT);
        if !format.exists() {
            write_synced(&format, FORMAT_TEXT)?;
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

/// Parse a snapshot's `meta.json`. States written before `trust_rule`
/// existed were corrected with the kernel-mass test: they restore with
/// `trust_rule = "mass"`; states written before `gain_shrinkage` existed
/// shrank new batches' gains with weight 1 and restore with it; states
/// written before `plate_rounds` existed aligned each plate in `rounds`
/// rounds and restore with `plate_rounds = rounds`. A restarted
/// daemon so keeps a feed's semantics (a new state gets the current
/// defaults).
pub(crate) fn parse_meta(bytes: &[u8]) -> Result<ModelMeta> {
    let mut v: serde_json::Value =
        serde_json::from_slice(bytes).context("snapshot meta.json is corrupt")?;
    if let Some(p) = v.get_mut("params").and_then(|p| p.as_object_mut()) {
        p.entry("trust_rule")
            .or_insert_with(|| serde_json::Value::from("mass"));
        p.entry("gain_shrinkage")
            .or_insert_with(|| serde_json::Value::from(1.0));
        // Before `plate_rounds`, a plate was aligned in `rounds` rounds.
        let rounds = p.get("rounds").cloned().unwrap_or_else(|| 2.into());
        p.entry("plate_rounds").or_insert(rounds);
        // Before `plate_mutual_share`, a plate's rank reached half of it.
        p.entry("plate_mutual_share").or_insert(0.5.into());
        // Before `plate_move`, a plate's landmark moved it all the way.
        p.entry("plate_move").or_insert("full".into());
    }
    serde_json::from_value(v).context("snapshot meta.json is corrupt")
}
