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
use std::time::Instant;

use anyhow::{Context, Result};

use crate::config::Config;
use crate::io::profile::{self, ControlSelector, NonFinitePolicy};
use crate::io::table;
use crate::method::fit::{correct as fit, Dataset, NoProgress};
use crate::method::model::Model;
use crate::serve::plate::{self, RejectReason, Rejection};
use crate::serve::state::StateDir;
use crate::serve::telemetry::{Stage, Telemetry};

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
    telemetry: Telemetry,
}

/// Report the restored model to `t` and mark the state restored.
fn restored(t: Telemetry, model: Option<&Model>) -> Telemetry {
    if let Some(m) = model {
        t.model(m);
        t.model_coverage(m);
    }
    t.set_state_restored(true);
    t
}

/// The `topic` label of the inbox backlog in `balans_consumer_lag`.
pub const INBOX_TOPIC: &str = "inbox";

fn is_plate_file(p: &Path) -> bool {
    table::Format::from_path(p).is_ok() && p.is_file()
}

impl DirServer {
    /// Open the state (restoring it), or warm-start from the reference table.
    pub fn open(cfg: Config) -> Result<DirServer> {
        DirServer::open_with(cfg, Telemetry::new()?)
    }

    /// [`DirServer::open`] reporting to `telemetry` (sets "state restored"
    /// when done).
    pub fn open_with(cfg: Config, telemetry: Telemetry) -> Result<DirServer> {
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
            telemetry: restored(telemetry, model.as_ref()),
            model,
        })
    }

    /// The model, once it exists.
    pub fn model(&self) -> Option<&Model> {
        self.model.as_ref()
    }

    /// The telemetry handle (metrics, readiness).
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
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
        let total = files.len();
        self.telemetry
            .consumer_lag(INBOX_TOPIC, 0, i64::try_from(total).unwrap_or(i64::MAX));
        for (i, f) in files.into_iter().enumerate() {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let started = Instant::now();
            self.telemetry.plate_consumed();
            match self.process(&f, started)? {
                Ok(true) => report.replayed += 1,
                Ok(false) => report.corrected += 1,
                Err((rejection, rows)) => {
                    tracing::warn!(
                        file = %f.display(),
                        reason = %rejection.reason,
                        detail = %rejection.message,
                        rows,
                        "plate rejected to dlq"
                    );
                    self.dead_letter(&f, &rejection)?;
                    self.telemetry.plate_dead_lettered(rejection.reason, rows);
                    report.rejected += 1;
                }
            }
            self.telemetry.consumer_lag(
                INBOX_TOPIC,
                0,
                i64::try_from(total - i - 1).unwrap_or(i64::MAX),
            );
        }
        Ok(report)
    }

    /// One file. Outer error: infrastructure failure (stop the daemon);
    /// inner: a rejected plate and its row count (0 when unreadable).
    /// `Ok(Ok(replayed))` when acknowledged.
    fn process(
        &mut self,
        path: &Path,
        started: Instant,
    ) -> Result<std::result::Result<bool, (Rejection, usize)>> {
        let source = path.display().to_string();
        let t_decode = Instant::now();
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {source}"))?;
        let t = match table::read_table(path) {
            Ok(t) => t,
            Err(e) => {
                return Ok(Err((
                    Rejection::from_error(RejectReason::Unreadable, &e),
                    0,
                )))
            }
        };
        let rows = t.num_rows();
        self.telemetry.rows_consumed(rows);
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
            Err(r) => return Ok(Err((r, rows))),
        };
        let decode_seconds = t_decode.elapsed().as_secs_f64();
        self.telemetry.stage(Stage::Decode, decode_seconds);
        if self.model.is_none() {
            let m = match Model::bootstrap(
                decoded.x.view(),
                decoded.controls.as_deref(),
                decoded.columns.names.clone(),
                &self.cfg.method,
            ) {
                Ok(m) => m,
                Err(e) => {
                    return Ok(Err((
                        Rejection::new(
                            RejectReason::Model,
                            format!("cannot start a model from {source}: {e:#}"),
                        ),
                        rows,
                    )))
                }
            };
            self.model = Some(m);
        }
        let Some(model) = self.model.as_ref() else {
            anyhow::bail!("internal: no model");
        };
        let out = match plate::correct(model, &decoded, &self.cfg.qc) {
            Ok(r) => r?,
            Err(r) => return Ok(Err((r, rows))),
        };
        let tm = &self.telemetry;
        if !out.qc.replay {
            tm.stage(Stage::Sampling, out.timings.sampling);
            tm.stage(Stage::Correction, out.timings.correction);
            tm.stage(Stage::Qc, out.timings.qc);
            tm.landmarks(out.timings.landmarks);
        }
        tm.stage(Stage::Encode, out.encode_seconds);
        let t_wal = Instant::now();
        if let Some(delta) = &out.delta {
            self.state.append(delta)?;
        }
        let wal_seconds = t_wal.elapsed().as_secs_f64();
        let t_write = Instant::now();
        let name = sanitize(&decoded.plate);
        table::write_table(&self.outbox.join(format!("{name}.parquet")), &out.table)?;
        let qc_path = self.outbox.join(format!("{name}.qc.json"));
        let tmp = self.outbox.join(format!(".{name}.qc.json.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(&out.qc)?)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &qc_path)?;
        let write_seconds = t_write.elapsed().as_secs_f64();
        let t_apply = Instant::now();
        if let (Some(delta), Some(model)) = (&out.delta, self.model.as_mut()) {
            model.apply(delta)?;
        }
        let apply_seconds = t_apply.elapsed().as_secs_f64();
        let tm = &self.telemetry;
        if out.delta.is_some() {
            tm.stage(Stage::Wal, wal_seconds);
            tm.stage(Stage::IndexUpdate, apply_seconds);
        }
        tm.stage(Stage::Write, write_seconds);
        if self.state.since_snapshot() >= self.cfg.serve.snapshot_every.max(1) {
            // A failed periodic snapshot is not fatal: the log still holds
            // every plate since the last one. It is counted and retried.
            if let Err(e) = self.snapshot() {
                tracing::error!(error = %format!("{e:#}"), "checkpoint failed; the write-ahead log keeps the state");
            }
        }
        let done = self
            .inbox
            .join("done")
            .join(path.file_name().unwrap_or_default());
        let t_commit = Instant::now();
        let moved = std::fs::rename(path, &done);
        let commit_seconds = t_commit.elapsed().as_secs_f64();
        self.telemetry.commit(commit_seconds, moved.is_ok());
        moved.with_context(|| format!("cannot move {source} to done/"))?;
        let latency = started.elapsed().as_secs_f64();
        let tm = &self.telemetry;
        tm.plate_published(rows, out.qc.replay, latency);
        if let Some(model) = &self.model {
            tm.model(model);
        }
        if let (Some(qc), Some(verdict)) = (&out.qc.qc, &out.qc.outlier) {
            tm.plate_qc(qc, verdict);
        }
        let reasons: Vec<&str> = out
            .qc
            .outlier
            .as_ref()
            .map(|v| v.reasons.iter().map(|r| r.as_str()).collect())
            .unwrap_or_default();
        let outlier = !reasons.is_empty();
        if outlier {
            tracing::warn!(
                plate = %decoded.plate,
                batch = %decoded.batch,
                reasons = %reasons.join(","),
                "QC outlier plate"
            );
        }
        tracing::info!(
            plate = %decoded.plate,
            batch = %decoded.batch,
            rows,
            version = %out.qc.model_version,
            replay = out.qc.replay,
            outlier,
            decode_s = decode_seconds,
            correct_s = out.qc.seconds,
            wal_s = wal_seconds,
            write_s = write_seconds,
            commit_s = commit_seconds,
            latency_s = latency,
            "plate published"
        );
        Ok(Ok(out.qc.replay))
    }

    fn dead_letter(&self, path: &Path, rejection: &Rejection) -> Result<()> {
        let name = path.file_name().unwrap_or_default();
        let dest = self.inbox.join("dlq").join(name);
        let mut why = dest.clone().into_os_string();
        why.push(".reason.txt");
        std::fs::write(&why, format!("{rejection}\n")).context("cannot write the dlq reason")?;
        std::fs::rename(path, &dest)
            .with_context(|| format!("cannot move {} to dlq/", path.display()))
    }

    /// Snapshot the model, timed and counted.
    fn snapshot(&mut self) -> Result<()> {
        let Some(m) = &self.model else {
            return Ok(());
        };
        let t = Instant::now();
        let r = self.state.snapshot(m);
        self.telemetry
            .checkpoint(t.elapsed().as_secs_f64(), r.is_ok());
        if r.is_ok() {
            self.telemetry.model_coverage(m);
            tracing::info!(
                rows = m.len(),
                plates = m.meta().plates.len(),
                seconds = t.elapsed().as_secs_f64(),
                "checkpoint written"
            );
        }
        r
    }

    /// Write a snapshot now (on shutdown).
    pub fn checkpoint(&mut self) -> Result<()> {
        if self.model.is_some() && self.state.since_snapshot() > 0 {
            self.snapshot()?;
        }
        Ok(())
    }

    /// Poll until `stop` is set (or once).
    pub fn run(&mut self, stop: Arc<AtomicBool>, once: bool) -> Result<ScanReport> {
        let mut total = ScanReport::default();
        self.telemetry.set_consuming(true);
        loop {
            let r = match self.scan(&stop) {
                Ok(r) => r,
                Err(e) => {
                    self.telemetry.set_consuming(false);
                    return Err(e);
                }
            };
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
        self.telemetry.set_consuming(false);
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
