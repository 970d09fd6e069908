//! The model's durable state at start-up: restore it from the state
//! directory (snapshot + write-ahead log), or warm-start it from a saved
//! model (`[serve] model`) or a reference table (`[serve] reference`), or
//! start with none (the first plate bootstraps one).
//! Shared by every source; the pipeline ([`super::pipeline`]) keeps the
//! state up to date afterwards.

use std::path::Path;

use anyhow::Result;

use crate::config::Config;
use crate::io::dataset::{LoadSpec, ProfileTable};
use crate::io::profile::NonFinitePolicy;
use crate::method::fit::{correct as fit, NoProgress};
use crate::method::model::Model;
use crate::serve::state::StateDir;

/// Open the state directory and restore the model from it, or warm-start
/// it from the saved model or the reference table (fitted offline), then
/// snapshot it, or start with no model (the first plate bootstraps one).
/// Shared by every source (directory and Kafka). A saved model and a
/// reference together are refused: which one to start from is ambiguous.
pub fn open_state(cfg: &Config) -> Result<(StateDir, Option<Model>)> {
    let sc = &cfg.serve;
    if let (Some(m), Some(r)) = (&sc.model, &sc.reference) {
        anyhow::bail!(
            "both a saved model ({}) and a reference table ({}) to start from: give one ([serve] model / --model or [serve] reference / --reference)",
            m.display(),
            r.display()
        );
    }
    let mut state = StateDir::open(&sc.state_dir)?;
    let model = match state.restore()? {
        Some((m, replayed)) => {
            tracing::info!(
                rows = m.len(),
                plates = m.meta().plates.len(),
                wal_records = replayed,
                "state restored"
            );
            if sc.reference.is_some() {
                tracing::info!("state exists: the reference table is not refitted");
            }
            if sc.model.is_some() {
                tracing::info!("state exists: the saved model is not loaded");
            }
            Some(m)
        }
        None => match (&sc.model, &sc.reference) {
            (Some(dir), _) => {
                let m = crate::serve::saved::load_model(dir)?;
                state.snapshot(&m)?;
                tracing::info!(
                    model = %dir.display(),
                    rows = m.len(),
                    plates = m.meta().plates.len(),
                    "warm-started from the saved model"
                );
                Some(m)
            }
            (None, Some(r)) => {
                let m = warm_start(cfg, r)?;
                state.snapshot(&m)?;
                tracing::info!(
                    rows = m.len(),
                    batches = m.meta().batches.len(),
                    "warm-started from the reference table"
                );
                Some(m)
            }
            (None, None) => {
                tracing::info!(
                    "no state and no reference: the first plate fixes normalisation and basis"
                );
                None
            }
        },
    };
    Ok((state, model))
}

/// Fit the reference table offline and seed the model with it.
fn warm_start(cfg: &Config, path: &Path) -> Result<Model> {
    // The reference is read like a `balans correct` input, except that
    // non-finite values are always refused (the daemon has no --impute)
    // and the label column is not needed.
    let spec = LoadSpec {
        non_finite: NonFinitePolicy::Error,
        label_col: None,
        ..LoadSpec::from_config(&cfg.correct)?
    };
    let t = ProfileTable::load(path, &spec)?;
    let f = fit(&t.dataset(), &cfg.method, &NoProgress)?;
    Model::from_fit(&f, t.columns.names.clone(), &cfg.method)
}

/// A fresh state directory seeded with `model` (the stream bench builds its
/// model itself): refuses a directory that already holds a snapshot, then
/// writes one of `model`.
#[cfg_attr(not(feature = "kafka"), allow(dead_code))] // used by the Kafka mode only
pub fn seed_state(cfg: &Config, model: &Model) -> Result<StateDir> {
    let dir = &cfg.serve.state_dir;
    anyhow::ensure!(
        !dir.join("snapshot").join("meta.json").exists(),
        "state directory {} already holds a model",
        dir.display()
    );
    let mut state = StateDir::open(dir)?;
    state.snapshot(model)?;
    Ok(state)
}
