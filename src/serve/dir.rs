//! The embedded directory mode: no broker, a local inbox.
//!
//! Plate files (`.parquet`, `.arrow`/`.ipc`/`.feather`, `.csv`, `.csv.gz`)
//! dropped into the inbox are processed in name order by the shared
//! [`Pipeline`]. This file is the mode's two ends:
//!
//! - [`Inbox`], the source: lists the inbox, hands over one file at a time,
//!   and acknowledges a plate by moving its file to `<inbox>/done/`;
//! - [`Outbox`], the sink: writes `<outbox>/<plate>.parquet` and
//!   `<plate>.qc.json` (temp + fsync + rename), and dead-letters a bad file
//!   by moving it to `<inbox>/dlq/` next to a `<file>.reason.txt`.
//!
//! A crash anywhere leaves either the input in the inbox (redone, or
//! replayed with identical output) or the input in `done/` with everything
//! durable. Write files into the inbox atomically (write elsewhere, then
//! rename) so a half-copied file is never read.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use arrow_array::RecordBatch;

use crate::config::Config;
use crate::io::table;
use crate::method::model::Model;
use crate::serve::hooks::PlateHooks;
use crate::serve::outcome::{Outcome, RejectReason, Rejection, RunReport};
use crate::serve::pipeline::{Delivery, Input, Next, Pipeline, Sink, Source};
use crate::serve::plate::{Corrected, DecodedPlate};
use crate::serve::telemetry::{Stage, Telemetry};

/// The `topic` label of the inbox backlog in `balans_consumer_lag`.
pub(crate) const INBOX_TOPIC: &str = "inbox";

/// A plate file taken from the inbox.
pub struct InboxFile {
    path: PathBuf,
    source: String,
    bytes: Vec<u8>,
    consumed: Instant,
}

impl Input for InboxFile {
    fn source(&self) -> &str {
        &self.source
    }
    fn consumed(&self) -> Instant {
        self.consumed
    }
    fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    fn table(&self) -> Result<RecordBatch, Rejection> {
        table::read_table(&self.path)
            .map_err(|e| Rejection::from_error(RejectReason::Unreadable, &e))
    }
    /// The file name up to its first dot.
    fn fallback_id(&self) -> String {
        self.path
            .file_name()
            .and_then(|n| n.to_string_lossy().split('.').next().map(str::to_string))
            .unwrap_or_else(|| "plate".into())
    }
}

/// The source: the inbox, listed in name order.
pub struct Inbox {
    dir: PathBuf,
    done: PathBuf,
    poll: Duration,
    once: bool,
    queue: VecDeque<PathBuf>,
    scanned: bool,
}

fn is_plate_file(p: &Path) -> bool {
    table::Format::from_path(p).is_ok() && p.is_file()
}

fn backlog(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Inbox {
    /// The inbox of `cfg` (creating it, `done/` and `dlq/`).
    pub fn open(cfg: &Config) -> Result<Inbox> {
        let sc = &cfg.serve;
        for d in [
            sc.inbox.clone(),
            sc.inbox.join("done"),
            sc.inbox.join("dlq"),
        ] {
            std::fs::create_dir_all(&d)
                .with_context(|| format!("cannot create {}", d.display()))?;
        }
        Ok(Inbox {
            dir: sc.inbox.clone(),
            done: sc.inbox.join("done"),
            poll: Duration::from_millis(sc.poll_ms),
            once: false,
            queue: VecDeque::new(),
            scanned: false,
        })
    }

    /// With `once`, the inbox is exhausted once the next listing is
    /// processed (`--once`); else it is listed again every `poll_ms`.
    pub fn set_once(&mut self, once: bool) {
        self.once = once;
        self.scanned = false;
    }

    fn scan(&mut self) -> Result<()> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .with_context(|| format!("cannot list {}", self.dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_plate_file(p))
            .collect();
        files.sort();
        self.queue = files.into();
        self.scanned = true;
        Ok(())
    }
}

impl Source for Inbox {
    type Input = InboxFile;

    fn next(&mut self, _stop: &AtomicBool, hooks: &dyn PlateHooks) -> Result<Next<InboxFile>> {
        if self.queue.is_empty() {
            if self.scanned {
                if self.once {
                    return Ok(Next::Exhausted);
                }
                std::thread::sleep(self.poll);
            }
            self.scan()?;
            hooks.lag(INBOX_TOPIC, 0, backlog(self.queue.len()));
        }
        let Some(path) = self.queue.pop_front() else {
            return Ok(Next::Idle);
        };
        hooks.lag(INBOX_TOPIC, 0, backlog(self.queue.len()));
        let consumed = Instant::now();
        let source = path.display().to_string();
        let bytes = std::fs::read(&path).with_context(|| format!("cannot read {source}"))?;
        Ok(Next::Plate(InboxFile {
            path,
            source,
            bytes,
            consumed,
        }))
    }

    /// Move a published plate's file to `done/`. A dead letter was already
    /// moved to `dlq/` by the sink: nothing more to do.
    fn acknowledge(
        &mut self,
        input: &InboxFile,
        outcome: Outcome,
        hooks: &dyn PlateHooks,
    ) -> Result<()> {
        if let Outcome::Rejected(_) = outcome {
            return Ok(());
        }
        let done = self.done.join(input.path.file_name().unwrap_or_default());
        let t = Instant::now();
        let moved = std::fs::rename(&input.path, &done);
        hooks.commit(t.elapsed().as_secs_f64(), moved.is_ok());
        moved.with_context(|| format!("cannot move {} to done/", input.source))
    }
}

/// The sink: the outbox, and the inbox's `dlq/`.
pub struct Outbox {
    dir: PathBuf,
    dlq: PathBuf,
}

impl Outbox {
    /// The outbox of `cfg` (creating it).
    pub fn open(cfg: &Config) -> Result<Outbox> {
        let sc = &cfg.serve;
        std::fs::create_dir_all(&sc.outbox)
            .with_context(|| format!("cannot create {}", sc.outbox.display()))?;
        Ok(Outbox {
            dir: sc.outbox.clone(),
            dlq: sc.inbox.join("dlq"),
        })
    }
}

/// Write `bytes` to `path` durably: temp file, fsync, rename.
fn write_durable(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, dir.join(name)).with_context(|| format!("cannot install {name}"))
}

impl Sink for Outbox {
    type Input = InboxFile;
    const STAGE: Stage = Stage::Write;

    fn publish(
        &mut self,
        _input: &InboxFile,
        plate: &DecodedPlate,
        out: &Corrected,
        _stop: &AtomicBool,
    ) -> Result<Delivery> {
        let name = sanitize(&plate.plate);
        table::write_table(&self.dir.join(format!("{name}.parquet")), &out.table)?;
        write_durable(
            &self.dir,
            &format!("{name}.qc.json"),
            &serde_json::to_vec_pretty(&out.qc)?,
        )?;
        Ok(Delivery::Durable)
    }

    fn dead_letter(
        &mut self,
        input: &InboxFile,
        rejection: &Rejection,
        _stop: &AtomicBool,
    ) -> Result<Delivery> {
        let name = input.path.file_name().unwrap_or_default();
        let dest = self.dlq.join(name);
        let mut why = dest.clone().into_os_string();
        why.push(".reason.txt");
        std::fs::write(&why, format!("{rejection}\n")).context("cannot write the dlq reason")?;
        std::fs::rename(&input.path, &dest)
            .with_context(|| format!("cannot move {} to dlq/", input.source))?;
        Ok(Delivery::Durable)
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

/// The directory daemon: the pipeline with the inbox and the outbox.
pub struct DirServer {
    pipeline: Pipeline,
    inbox: Inbox,
    outbox: Outbox,
    telemetry: Telemetry,
}

impl DirServer {
    /// Open the state (restoring it), or warm-start from the reference table.
    pub fn open(cfg: Config) -> Result<DirServer> {
        DirServer::open_with(cfg, Telemetry::new()?)
    }

    /// [`DirServer::open`] reporting to `telemetry` (sets "state restored"
    /// when done).
    pub fn open_with(cfg: Config, telemetry: Telemetry) -> Result<DirServer> {
        let inbox = Inbox::open(&cfg)?;
        let outbox = Outbox::open(&cfg)?;
        let pipeline = Pipeline::open(cfg, Box::new(telemetry.clone()))?;
        Ok(DirServer {
            pipeline,
            inbox,
            outbox,
            telemetry,
        })
    }

    /// The model, once it exists.
    pub fn model(&self) -> Option<&Model> {
        self.pipeline.model()
    }

    /// The telemetry handle (metrics, readiness).
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// Write a snapshot now (on shutdown).
    pub fn checkpoint(&mut self) -> Result<()> {
        self.pipeline.checkpoint()
    }

    /// Poll the inbox until `stop` is set (or drain it once), then write a
    /// snapshot.
    pub fn run(&mut self, stop: Arc<AtomicBool>, once: bool) -> Result<RunReport> {
        self.inbox.set_once(once);
        self.pipeline.run(&mut self.inbox, &mut self.outbox, &stop)
    }
}
