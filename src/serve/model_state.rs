//! The model's durable state at start-up: restore it from the state
//! directory (snapshot + write-ahead log), or warm-start it from a
//! reference table, or start with none (the first plate bootstraps one).
//! Shared by every source; the pipeline ([`super::pipeline`]) keeps the
//! state up to date afterwards.

use std::path::Path;

use anyhow::{Context, Result};

use crate::config::Config;
use crate::io::profile::{self, ControlSelector, NonFinitePolicy};
use crate::io::table;
use crate::method::fit::{correct as fit, Dataset, NoProgress};
use crate::method::model::Model;
use crate::serve::state::StateDir;

/// Open the state directory and restore the model from it, or warm-start
/// it from the reference table (fitted offline, then snapshotted), or
/// start with no model (the first plate bootstraps one). Shared by every
/// source (directory and Kafka).
pub fn open_state(cfg: &Config) -> Result<(StateDir, Option<Model>)> {
    let sc = &cfg.serve;
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
            Some(m)
        }
        None => match &sc.reference {
            Some(r) => {
                let m = warm_start(cfg, r)?;
                state.snapshot(&m)?;
                tracing::info!(
                    rows = m.len(),
                    batches = m.meta().batches.len(),
                    "warm-started from the reference table"
                );
                Some(m)
            }
            None => {
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
    let source = path.display().to_string();
    let cc = &cfg.correct;
    let batch_col = cc
        .batch_col
        .as_deref()
        .context("[correct] batch_col is required for the reference table")?;
    let t = table::read_table(path)?;
    let batch = profile::string_column(&t, batch_col, &source)?;
    let plate = if t.schema().column_with_name(&cc.plate_col).is_some() {
        Some(profile::string_column(&t, &cc.plate_col, &source)?)
    } else {
        None
    };
    let controls = match cc.control.as_deref() {
        Some(s) => Some(profile::control_mask(
            &t,
            &s.parse::<ControlSelector>()?,
            &source,
        )?),
        None => None,
    };
    let exclude = cc.exclude.as_deref().map(regex::Regex::new).transpose()?;
    let cols = profile::feature_columns(&t, exclude.as_ref(), &source)?;
    let fm = profile::feature_matrix(&t, cols, NonFinitePolicy::Error, &source)?;
    let data = Dataset {
        x: fm.values.view(),
        batch: &batch,
        plate: plate.as_deref(),
        controls: controls.as_deref(),
    };
    let f = fit(&data, &cfg.method, &NoProgress)?;
    Model::from_fit(&f, fm.columns.names.clone(), &cfg.method)
}

/// A fresh state directory seeded with `model` (the stream bench builds its
/// model itself): refuses a directory that already holds a snapshot, then
/// writes one of `model`.
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
