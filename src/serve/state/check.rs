//! `balans state check` and `balans state repair`: what the restore would
//! find in a state directory, and the one repair it allows — truncating the
//! write-ahead log at its first bad record, with the dropped bytes kept.
//!
//! Neither creates nor removes anything unless `repair` is confirmed.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::method::model::{IndexRestore, Model};

use super::snapshot::{sync_dir, write_synced};
use super::wal::{self, Damage};
use super::{locate_snapshot, read_log, replay, requires_manifest, truncate_log};

/// What [`check`] found.
#[derive(Debug, Clone)]
pub struct Report {
    /// Human-readable findings, one per line.
    pub lines: Vec<String>,
    /// True when the daemon would start (a torn tail is fine: it is
    /// truncated automatically).
    pub ok: bool,
    /// The first bad record of the log that a repair would cut at, with
    /// why (`None`: the log needs no repair).
    pub cut: Option<(u64, String)>,
    /// True when the snapshot itself is damaged or missing (no repair).
    pub snapshot_damaged: bool,
}

/// The snapshot's batch indices: how many load from their files, and each
/// one the restore rebuilds from the rows, with why (a warning, not an
/// error: the index is derived data).
fn index_lines(r: &mut Report, model: &Model, indices: &[IndexRestore]) {
    let loaded = indices
        .iter()
        .filter(|x| **x == IndexRestore::Loaded)
        .count();
    let built = indices
        .iter()
        .filter(|x| **x == IndexRestore::Built)
        .count();
    if built == indices.len() {
        r.lines.push(format!(
            "snapshot: {built} batch indices are built from the rows at start (none stored)"
        ));
        return;
    }
    r.lines.push(format!(
        "snapshot: {loaded} of {} batch indices load from their files (checksums and rows verified)",
        indices.len()
    ));
    for (b, x) in indices.iter().enumerate() {
        if let IndexRestore::Rebuilt(why) = x {
            r.lines.push(format!(
                "snapshot: WARNING the index of batch {} ({}) is not used: {why}; \
                 the daemon rebuilds it from the rows at start",
                model.meta().batches.get(b).map_or("?", String::as_str),
                super::snapshot::index_file(b),
            ));
        }
    }
}

/// Inspect a state directory the way the restore does (read only).
pub fn check(dir: &Path) -> Result<Report> {
    let mut r = Report {
        lines: Vec::new(),
        ok: true,
        cut: None,
        snapshot_damaged: false,
    };
    anyhow::ensure!(dir.is_dir(), "{} is not a directory", dir.display());
    let tmp = dir.join("snapshot.tmp");
    if tmp.is_dir() {
        r.lines.push(format!(
            "note: {} is an unfinished snapshot; the daemon removes it at start",
            tmp.display()
        ));
    }
    let snap = match locate_snapshot(dir) {
        Ok(Some(s)) => s,
        Ok(None) => {
            r.lines
                .push("empty state directory: the daemon starts a new model".into());
            return Ok(r);
        }
        Err(e) => {
            r.lines.push(format!("snapshot: ERROR {e:#}"));
            r.ok = false;
            r.snapshot_damaged = true;
            return Ok(r);
        }
    };
    let (mut model, indices) =
        match super::snapshot::read_with_indices(&snap, requires_manifest(dir)) {
            Ok(m) => m,
            Err(e) => {
                r.lines.push(format!("snapshot: ERROR {e:#}"));
                r.ok = false;
                r.snapshot_damaged = true;
                return Ok(r);
            }
        };
    let segments = std::fs::read(snap.join(super::snapshot::MANIFEST))
        .ok()
        .and_then(|b| serde_json::from_slice::<super::snapshot::Manifest>(&b).ok())
        .map_or(1, |m| m.segments.len() + 1);
    let verified = if super::snapshot::has_manifest(&snap) {
        format!(
            "checksums verified; rows in {segments} segment{}",
            if segments == 1 { "" } else { "s" }
        )
    } else {
        "no manifest: predates checksums, not verified".to_string()
    };
    r.lines.push(format!(
        "snapshot: {}: {} rows, {} plates, {} batches ({verified})",
        snap.display(),
        model.len(),
        model.meta().plates.len(),
        model.meta().batches.len()
    ));
    index_lines(&mut r, &model, &indices);
    let path = dir.join("wal.log");
    let bytes = read_log(&path)?;
    let scan = wal::scan(&bytes);
    r.lines.push(format!(
        "log: {}: {} bytes, {} intact records before any damage",
        path.display(),
        scan.file_len,
        scan.records.len()
    ));
    match replay(&mut model, &scan.records) {
        Ok(n) => r.lines.push(format!(
            "log: {n} records apply; the model then holds {} plates (next version {})",
            model.meta().plates.len(),
            model.version()
        )),
        Err(e) => {
            r.lines.push(format!(
                "log: ERROR record at byte offset {}: {}",
                e.offset, e.message
            ));
            r.ok = false;
            r.cut = Some((e.offset, e.message));
            return Ok(r);
        }
    }
    match scan.damage {
        None => {}
        Some(Damage::TornTail { offset, reason }) => {
            r.lines.push(format!(
                "log: torn tail at byte offset {offset} ({reason}; {} bytes, nothing intact after it): \
                 the daemon truncates it at start",
                scan.file_len - offset
            ));
            r.cut = Some((offset, reason));
        }
        Some(Damage::Corrupt {
            offset,
            reason,
            next_valid,
        }) => {
            let after = wal::records_after(&bytes, offset as usize + 1);
            r.lines.push(format!(
                "log: ERROR damaged record at byte offset {offset} ({reason}); intact records follow \
                 (first at offset {next_valid}): {} plate(s) after the damage: {}",
                after.len(),
                plate_list(&after)
            ));
            r.ok = false;
            r.cut = Some((offset, reason));
        }
    }
    Ok(r)
}

fn plate_list(records: &[wal::Record]) -> String {
    let ids: Vec<&str> = records.iter().map(|r| r.delta.plate.as_str()).collect();
    if ids.len() > 20 {
        format!("{} ... ({} in all)", ids[..20].join(", "), ids.len())
    } else {
        ids.join(", ")
    }
}

/// The copy a repair keeps of the bytes it cuts.
pub fn damaged_copy(dir: &Path, offset: u64) -> PathBuf {
    dir.join(format!("wal.log.damaged-{offset}"))
}

/// Truncate the log at its first bad record (see [`check`]), keeping the
/// dropped bytes in `wal.log.damaged-<offset>`. Without `yes`, only says
/// what it would do. Returns the report (its `ok`: the directory is now
/// restorable).
pub fn repair(dir: &Path, yes: bool) -> Result<Report> {
    let mut r = check(dir)?;
    let orphan_log = r.snapshot_damaged
        && !dir.join("snapshot").exists()
        && !dir.join("snapshot.old").exists()
        && !requires_manifest(dir)
        && std::fs::metadata(dir.join("wal.log")).is_ok_and(|m| m.len() > 0);
    if orphan_log {
        // A log whose model was never snapshotted (a bootstrapped model
        // killed before its first snapshot, written by an older build):
        // nothing can restore it; the whole log is moved aside.
        r.lines.push(
            "repair: the log has no snapshot to apply to (its model was never snapshotted); \
             the whole log is cut"
                .into(),
        );
        r.cut = Some((0, "no snapshot".into()));
        r.snapshot_damaged = false;
    }
    if r.snapshot_damaged {
        r.lines.push(
            "repair: the snapshot is damaged or missing; it cannot be rebuilt from the log. \
             Restore the state directory from a backup, or move it away to start a new model"
                .into(),
        );
        r.ok = false;
        return Ok(r);
    }
    let Some((offset, reason)) = r.cut.clone() else {
        r.lines.push("repair: nothing to repair".into());
        return Ok(r);
    };
    let path = dir.join("wal.log");
    let bytes = read_log(&path)?;
    let dropped = wal::records_after(&bytes, offset as usize);
    let copy = damaged_copy(dir, offset);
    r.lines.push(format!(
        "repair: cut {} at byte offset {offset} ({reason}): {} bytes dropped (kept in {}), \
         {} plate(s) dropped: {}",
        path.display(),
        bytes.len() as u64 - offset,
        copy.display(),
        dropped.len(),
        plate_list(&dropped)
    ));
    if !dropped.is_empty() {
        r.lines.push(
            "repair: the dropped plates must be sent again; their first publications carried \
             model versions that will be issued again to other plates"
                .into(),
        );
    }
    if !yes {
        r.lines
            .push("repair: nothing changed (dry run); run again with --yes to apply".into());
        r.ok = false;
        return Ok(r);
    }
    let start = usize::try_from(offset).context("offset")?;
    write_synced(&copy, &bytes[start..])?;
    sync_dir(dir)?;
    truncate_log(&path, offset)?;
    r.lines.push("repair: done".into());
    let after = check(dir)?;
    r.ok = after.ok;
    r.lines
        .extend(after.lines.into_iter().map(|l| format!("now: {l}")));
    Ok(r)
}
