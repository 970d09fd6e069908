//! Saved models: the daemon's incremental model written to a directory,
//! read back, and applied to new plates outside the daemon.
//!
//! `balans correct --save-model DIR` writes one, `balans apply --model DIR`
//! and `balans serve --model DIR` read it, and the Python package calls the
//! same three functions ([`save_model`], [`load_model`], [`apply_model`]).
//!
//! # Format (version [`FORMAT_VERSION`])
//!
//! ```text
//! DIR/model.json        {"format": "balans-model", "version": 1,
//!                        "provenance": {..}, "manifest_hash": ..}
//! DIR/snapshot/         the daemon's snapshot (serve::state::snapshot):
//!                       meta.json, y.f32, batch.u32, coverage.f32, w.f32
//!                       (the rows' corrected profiles, for a model that
//!                       corrects in the feature space, the default) and
//!                       manifest.json (length + 64-bit hash of each file)
//! ```
//!
//! `model.json` is written last, so a directory with one is complete. It
//! names the format and its version (a reader refuses a version it does not
//! know, rather than misreading it), carries the [`Provenance`] of the fit,
//! and pins the snapshot's manifest by its hash; the manifest in turn pins
//! every data file. [`load_model`] verifies the whole chain and the model's
//! consistency, and every refusal names the file at fault.
//!
//! # What applying guarantees
//!
//! [`apply_model`] is inductive: rows already in the model never move, new
//! plates are aligned to it and then incorporated, one at a time, exactly
//! as the daemon does. See [`apply`] for the details.

pub mod apply;
pub mod provenance;

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

use crate::method::model::{content_hash, Model};
use crate::serve::state::snapshot;

pub use apply::{apply_model, Applied, ApplyOptions};
pub use provenance::Provenance;

/// The value of `format` in `model.json`.
pub const FORMAT_NAME: &str = "balans-model";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The saved model's descriptor file.
pub const MODEL_FILE: &str = "model.json";
/// The sub-directory holding the snapshot.
pub const SNAPSHOT_DIR: &str = "snapshot";

/// `model.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Descriptor {
    /// Always [`FORMAT_NAME`].
    format: String,
    /// [`FORMAT_VERSION`] of the writer.
    version: u32,
    /// How the model was made.
    provenance: Provenance,
    /// [`content_hash`] of `snapshot/manifest.json`.
    manifest_hash: u64,
}

/// Write `model` to `dir` as a saved model: the daemon's snapshot format
/// (checksummed manifest) plus a versioned format marker and the
/// provenance. `dir` is created when missing; a directory that already
/// holds a saved model, or any other file, is refused (nothing is
/// overwritten).
pub fn save_model(model: &Model, dir: &Path, provenance: &Provenance) -> Result<()> {
    prepare_dir(dir)?;
    let snap = dir.join(SNAPSHOT_DIR);
    std::fs::create_dir_all(&snap)
        .with_context(|| format!("cannot create the directory {}", snap.display()))?;
    snapshot::write(&snap, model)?;
    let manifest = snap.join(snapshot::MANIFEST);
    let bytes =
        std::fs::read(&manifest).with_context(|| format!("cannot read {}", manifest.display()))?;
    let desc = Descriptor {
        format: FORMAT_NAME.into(),
        version: FORMAT_VERSION,
        provenance: provenance.clone(),
        manifest_hash: content_hash(&bytes),
    };
    snapshot::write_synced(&dir.join(MODEL_FILE), &serde_json::to_vec_pretty(&desc)?)?;
    snapshot::sync_dir(dir)?;
    tracing::info!(model = %dir.display(), rows = model.len(), plates = model.meta().plates.len(), "saved model");
    Ok(())
}

/// Check, before any work, that a model can be saved to `dir`: it does not
/// exist, or is an empty directory (it is created, like `mkdir -p`).
pub fn prepare_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        ensure!(
            dir.is_dir(),
            "cannot save a model to {}: it is not a directory",
            dir.display()
        );
        let mut entries = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read the directory {}", dir.display()))?;
        if entries.next().is_some() {
            bail!(
                "cannot save a model to {}: the directory is not empty (choose a new one)",
                dir.display()
            );
        }
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the directory {}", dir.display()))
}

/// Read a saved model's descriptor, checking its format and version.
fn read_descriptor(dir: &Path) -> Result<Descriptor> {
    let path = dir.join(MODEL_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let hint = if dir.join("snapshot").join("meta.json").exists() {
                " (a daemon state directory is not a saved model: save one with `balans correct --save-model`)"
            } else {
                ""
            };
            bail!(
                "{} is missing: {} is not a saved model{hint}",
                path.display(),
                dir.display()
            )
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    // The version first, from a loose parse, so a newer format is named as
    // such rather than as a parse error of fields this build does not know.
    let loose: serde_json::Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: not valid JSON (the file is damaged)", path.display()))?;
    let format = loose.get("format").and_then(|v| v.as_str());
    ensure!(
        format == Some(FORMAT_NAME),
        "{}: format {:?}, expected {FORMAT_NAME:?} (not a saved balans model)",
        path.display(),
        format.unwrap_or("(none)")
    );
    let version = loose.get("version").and_then(|v| v.as_u64());
    match version {
        Some(v) if v == u64::from(FORMAT_VERSION) => {}
        Some(v) if v > u64::from(FORMAT_VERSION) => bail!(
            "{}: format version {v} is newer than this build of balans reads ({FORMAT_VERSION}); upgrade balans",
            path.display()
        ),
        Some(v) => bail!(
            "{}: unknown format version {v} (this build reads {FORMAT_VERSION})",
            path.display()
        ),
        None => bail!("{}: no format version", path.display()),
    }
    serde_json::from_value(loose)
        .with_context(|| format!("{}: not a saved-model descriptor", path.display()))
}

/// Read a saved model. Refuses, naming the file: a missing `model.json` or
/// snapshot file, an unknown or future format version, a manifest that is
/// not the one `model.json` pins, and any data file whose length or
/// checksum differs from the manifest (see [`snapshot::read`]).
pub fn load_model(dir: &Path) -> Result<Model> {
    load_with_provenance(dir).map(|(m, _)| m)
}

/// [`load_model`], with the model's [`Provenance`].
pub fn load_with_provenance(dir: &Path) -> Result<(Model, Provenance)> {
    let desc = read_descriptor(dir)?;
    let snap = dir.join(SNAPSHOT_DIR);
    let manifest = snap.join(snapshot::MANIFEST);
    let bytes = std::fs::read(&manifest).with_context(|| {
        format!(
            "cannot read {} (the saved model is incomplete)",
            manifest.display()
        )
    })?;
    ensure!(
        content_hash(&bytes) == desc.manifest_hash,
        "{}: checksum mismatch against {} (the file is damaged)",
        manifest.display(),
        dir.join(MODEL_FILE).display()
    );
    // Indices rebuilt from the rows (not the stored files): the loaded model
    // then aligns new plates exactly as the model that was saved
    // ([`snapshot::read_rebuilt`]).
    let model = snapshot::read_rebuilt(&snap, true)
        .with_context(|| format!("cannot load the saved model {}", dir.display()))?;
    tracing::info!(model = %dir.display(), rows = model.len(), plates = model.meta().plates.len(), "loaded saved model");
    Ok((model, desc.provenance))
}
