//! The embedded directory mode: no broker, a local inbox.
//!
//! Plate files (`.parquet`, `.arrow`/`.ipc`/`.feather`, `.csv`, `.csv.gz`)
//! dropped into the inbox are processed in name order. For each file:
//!
//! 1. read and check it (bad files go to `<inbox>/dlq/` with a
//!    `<file>.reason.txt`; the daemon carries on);
//! 2. correct it against the model (or re-derive the output of a plate
//!    already incorporated with the same content — a replay after a crash);
//! 3. append the state change to the write-ahead log (fsync);
//! 4. write `<outbox>/<plate>.parquet` and `<plate>.qc.json` (temp + fsync +
//!    rename);
//! 5. apply the change to the in-memory model;
//! 6. acknowledge: move the input to `<inbox>/done/`.
//!
//! A crash anywhere leaves either the input in the inbox (redone, or
//! replayed with identical output) or the input in `done/` with everything
//! durable: no plate is lost and none is incorporated twice. Write files into
//! the inbox atomically (write elsewhere, then rename) so a half-copied file
//! is never read.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};

use crate::balans::{correct as fit, Dataset, NoProgress};
use crate::config::Config;
use crate::model::Model;
use crate::profile::{self, ControlSelector, NonFinitePolicy};
use crate::serve::plate::{self, Rejection};
use crate::state::StateDir;
use crate::table;

/// What one scan did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScanReport {
    /// Plates corrected and incorporated.
    pub corrected: usize,
    /// Plates re-published (already incorporated).
    pub replayed: usize,
    /// Files moved to the dead-letter directory.
    pub rejected: usize,
}

/// The directory pipeline and its state.
pub struct DirServer {
    cfg: Config,
    state: StateDir,
    model: Option<Model>,
    inbox: PathBuf,
    outbox: PathBuf,
}

fn is_plate_file(p: &Path) -> bool {
    table::Format::from_path(p).is_ok() && p.is_file()
}

impl DirServer {
    /// Open the state (restoring it), or warm-start from the reference table.
    pub fn open(cfg: Config) -> Result<DirServer> {
        let sc = &cfg.serve;
        for d in [&sc.inbox, &sc.outbox] {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        for sub in ["done", "dlq"] {
            std::fs::create_dir_all(sc.inbox.join(sub))?;
        }
        let (state, model) = open_state(&cfg)?;
        Ok(DirServer {
            inbox: sc.inbox.clone(),
            outbox: sc.outbox.clone(),
            cfg,
            state,
            model,
        })
    }

    /// The model, once it exists.
    pub fn model(&self) -> Option<&Model> {
        self.model.as_ref()
    }

    /// Process every plate file in the inbox once (name order).
    pub fn scan(&mut self, stop: &AtomicBool) -> Result<ScanReport> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.inbox)
            .with_context(|| format!("cannot list {}", self.inbox.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_plate_file(p))
            .collect();
        files.sort();
        let mut report = ScanReport::default();
        for f in files {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            match self.process(&f)? {
                Ok(true) => report.replayed += 1,
                Ok(false) => report.corrected += 1,
                Err(Rejection(reason)) => {
                    tracing::warn!(file = %f.display(), %reason, "plate rejected to dlq");
                    self.dead_letter(&f, &reason)?;
                    report.rejected += 1;
                }
            }
        }
        Ok(report)
    }

    /// One file. Outer error: infrastructure failure (stop the daemon);
    /// inner: a rejected plate. `Ok(Ok(replayed))` when acknowledged.
    fn process(&mut self, path: &Path) -> Result<std::result::Result<bool, Rejection>> {
        let source = path.display().to_string();
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {source}"))?;
        let t = match table::read_table(path) {
            Ok(t) => t,
            Err(e) => return Ok(Err(Rejection(format!("{e:#}")))),
        };
        let stem = path
            .file_name()
            .map(|n| {
                n.to_string_lossy()
                    .split('.')
                    .next()
                    .unwrap_or("plate")
                    .to_string()
            })
            .unwrap_or_else(|| "plate".into());
        let decoded = match plate::decode(t, &bytes, &stem, &self.cfg.correct, &source) {
            Ok(d) => d,
            Err(r) => return Ok(Err(r)),
        };
        if self.model.is_none() {
            let m = match Model::bootstrap(
                decoded.x.view(),
                decoded.controls.as_deref(),
                decoded.columns.names.clone(),
                &self.cfg.method,
            ) {
                Ok(m) => m,
                Err(e) => {
                    return Ok(Err(Rejection(format!(
                        "cannot start a model from {source}: {e:#}"
                    ))))
                }
            };
            self.model = Some(m);
        }
        let Some(model) = self.model.as_ref() else {
            anyhow::bail!("internal: no model");
        };
        let started = std::time::Instant::now();
        let out = match plate::correct(model, &decoded) {
            Ok(r) => r?,
            Err(r) => return Ok(Err(r)),
        };
        if let Some(delta) = &out.delta {
            self.state.append(delta)?;
        }
        let name = sanitize(&decoded.plate);
        table::write_table(&self.outbox.join(format!("{name}.parquet")), &out.table)?;
        let qc_path = self.outbox.join(format!("{name}.qc.json"));
        let tmp = self.outbox.join(format!(".{name}.qc.json.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(&out.qc)?)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &qc_path)?;
        if let (Some(delta), Some(model)) = (&out.delta, self.model.as_mut()) {
            model.apply(delta)?;
        }
        if let Some(model) = &self.model {
            if self.state.since_snapshot() >= self.cfg.serve.snapshot_every.max(1) {
                self.state.snapshot(model)?;
            }
        }
        let done = self
            .inbox
            .join("done")
            .join(path.file_name().unwrap_or_default());
        std::fs::rename(path, &done).with_context(|| format!("cannot move {source} to done/"))?;
        tracing::info!(
            plate = %decoded.plate,
            batch = %decoded.batch,
            rows = decoded.x.nrows(),
            version = %out.qc.model_version,
            replay = out.qc.replay,
            seconds = started.elapsed().as_secs_f64(),
            "plate published"
        );
        Ok(Ok(out.qc.replay))
    }

    fn dead_letter(&self, path: &Path, reason: &str) -> Result<()> {
        let name = path.file_name().unwrap_or_default();
        let dest = self.inbox.join("dlq").join(name);
        let mut why = dest.clone().into_os_string();
        why.push(".reason.txt");
        std::fs::write(&why, format!("{reason}\n")).context("cannot write the dlq reason")?;
        std::fs::rename(path, &dest)
            .with_context(|| format!("cannot move {} to dlq/", path.display()))
    }

    /// Write a snapshot now (on shutdown).
    pub fn checkpoint(&mut self) -> Result<()> {
        if let Some(m) = &self.model {
            if self.state.since_snapshot() > 0 {
                self.state.snapshot(m)?;
            }
        }
        Ok(())
    }

    /// Poll until `stop` is set (or once).
    pub fn run(&mut self, stop: Arc<AtomicBool>, once: bool) -> Result<ScanReport> {
        let mut total = ScanReport::default();
        loop {
            let r = self.scan(&stop)?;
            total.corrected += r.corrected;
            total.replayed += r.replayed;
            total.rejected += r.rejected;
            if once || stop.load(Ordering::SeqCst) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(self.cfg.serve.poll_ms));
            if stop.load(Ordering::SeqCst) {
                break;
            }
        }
        self.checkpoint()?;
        Ok(total)
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.@".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

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
