//! The embedded directory mode: no broker, a local inbox.
//!
//! Plate files (`.parquet`, `.arrow`/`.ipc`/`.feather`, `.csv`, `.csv.gz`)
//! dropped into the inbox are processed in name order by the shared
//! [`Pipeline`]. This file is the mode's two ends:
//!
//! - [`Inbox`], the source: lists the inbox, hands over one file at a time,
//!   and acknowledges a plate by moving its file to `<inbox>/done/`;
//! - [`Outbox`], the sink: writes `<outbox>/<name>.parquet` and
//!   `<name>.qc.json` (temp + fsync + rename; `<name>` is
//!   [`output_name`] of the plate id), and dead-letters a bad file by moving
//!   it to `<inbox>/dlq/` next to a `<file>.reason.txt`.
//!
//! A crash anywhere leaves either the input in the inbox (redone, or
//! replayed with identical output) or the input in `done/` with everything
//! durable (every rename is followed by an fsync of its directories).
//!
//! # Which files are picked up
//!
//! Write files into the inbox atomically (write elsewhere, then rename) so a
//! half-copied file is never read. For writers that do not, the inbox
//! ignores temporary names (dot-files, `*.tmp`, `*.part`, `*.partial`,
//! `*.crdownload`, `*.download`, `*.swp`, `*~`, and any name whose extension
//! is not a table format), waits until a file is `[serve] settle_ms` old
//! (modification time) and checks that its size and modification time did
//! not change while it was read; otherwise it is left for a later scan.
//!
//! # A bad file is the file's problem
//!
//! A file over `[serve] max_plate_bytes` is dead-lettered (`oversized`)
//! without being read; a file that cannot be read (permissions, I/O error)
//! is dead-lettered (`unreadable`). If even the move to `dlq/` fails, the
//! error is logged and the file is skipped for the rest of the run: one
//! plate never stops the daemon.

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use arrow_array::RecordBatch;

use crate::config::Config;
use crate::io::table;
use crate::method::model::{content_hash, Model};
use crate::serve::hooks::PlateHooks;
use crate::serve::outcome::{Outcome, RejectReason, Rejection, RunReport};
use crate::serve::pipeline::{Delivery, Input, Next, Pipeline, Sink, Source};
use crate::serve::plate::{Corrected, DecodedPlate};
use crate::serve::telemetry::{Stage, Telemetry};

/// The `topic` label of the inbox backlog in `balans_consumer_lag`.
pub(crate) const INBOX_TOPIC: &str = "inbox";

/// A plate file taken from the inbox, read once: its bytes are what is
/// hashed and decoded.
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
        let read = table::Format::from_path(&self.path)
            .and_then(|f| table::decode_table(&self.bytes, f))
            .with_context(|| format!("cannot read table {}", self.source));
        read.map_err(|e| {
            let reason = if table::is_layout_error(&e) {
                RejectReason::Schema
            } else {
                RejectReason::Unreadable
            };
            Rejection::from_error(reason, &e)
        })
    }
    /// The file name up to its first dot.
    fn fallback_id(&self) -> String {
        crate::io::files::plate_id_of(&self.path)
    }
}

/// The source: the inbox, listed in name order.
pub struct Inbox {
    dir: PathBuf,
    done: PathBuf,
    poll: Duration,
    settle: Duration,
    max_bytes: u64,
    once: bool,
    queue: VecDeque<PathBuf>,
    scanned: bool,
    /// Files of the last scan not yet settled (still being written?).
    unsettled: usize,
    /// Files whose dead letter could not be moved to `dlq/`: left alone
    /// for the rest of the run.
    skipped: HashSet<PathBuf>,
}

/// Suffixes of the temporary files of common writers (browsers, rsync,
/// editors, download tools).
const TEMP_SUFFIXES: [&str; 7] = [
    ".tmp",
    ".part",
    ".partial",
    ".crdownload",
    ".download",
    ".swp",
    "~",
];

/// Whether `name` looks like a plate file: a table extension, not a
/// dot-file, not a temporary name.
fn is_plate_name(p: &Path) -> bool {
    let Some(name) = p
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
    else {
        return false;
    };
    !name.starts_with('.')
        && !TEMP_SUFFIXES.iter().any(|s| name.ends_with(s))
        && table::Format::from_path(p).is_ok()
}

fn backlog(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Size and modification time: a file is stable while they hold still.
fn fingerprint(p: &Path) -> std::io::Result<(u64, Option<SystemTime>)> {
    let m = std::fs::metadata(p)?;
    Ok((m.len(), m.modified().ok()))
}

/// fsync a directory so a rename into or out of it is durable. Best
/// effort: failing here cannot corrupt anything, the rename already
/// happened; it is logged.
fn sync_dir(dir: &Path) {
    if let Err(e) = table::sync_dir(dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot fsync the directory");
    }
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
            settle: Duration::from_millis(sc.settle_ms),
            max_bytes: sc.max_plate_bytes,
            once: false,
            queue: VecDeque::new(),
            scanned: false,
            unsettled: 0,
            skipped: HashSet::new(),
        })
    }

    /// With `once`, the inbox is exhausted once the next listing is
    /// processed (`--once`; files still settling are waited for); else it
    /// is listed again every `poll_ms`.
    pub fn set_once(&mut self, once: bool) {
        self.once = once;
        self.scanned = false;
    }

    /// Whether `p` is old enough to be read.
    fn settled(&self, p: &Path) -> bool {
        let age = std::fs::metadata(p)
            .and_then(|m| m.modified())
            // An mtime in the future (a skewed clock) would never settle:
            // count it as settled; the read-time check still applies.
            .map(|t| t.elapsed().unwrap_or(self.settle));
        match age {
            Ok(age) => age >= self.settle,
            // Cannot tell (stat failed): let the read decide (a dead letter).
            Err(_) => true,
        }
    }

    fn scan(&mut self) -> Result<()> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .with_context(|| format!("cannot list {}", self.dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_plate_name(p) && p.is_file() && !self.skipped.contains(p))
            .collect();
        files.sort();
        let (ready, waiting): (Vec<PathBuf>, Vec<PathBuf>) =
            files.into_iter().partition(|p| self.settled(p));
        self.unsettled = waiting.len();
        self.queue = ready.into();
        self.scanned = true;
        Ok(())
    }

    /// Read `path` once, checking it held still; [`Next::Idle`] when it
    /// changed (left for a later scan, which `--once` waits for).
    fn take(&mut self, path: PathBuf) -> Next<InboxFile> {
        let consumed = Instant::now();
        let source = path.display().to_string();
        let mut file = InboxFile {
            path,
            source,
            bytes: Vec::new(),
            consumed,
        };
        let before = match fingerprint(&file.path) {
            Ok(f) => f,
            Err(e) => {
                let r = Rejection::new(
                    RejectReason::Unreadable,
                    format!("{}: cannot read the file: {e}", file.source),
                );
                return Next::Rejected(file, r);
            }
        };
        if before.0 > self.max_bytes {
            let r = Rejection::new(
                RejectReason::Oversized,
                format!(
                    "{}: oversized plate: {} bytes > [serve] max_plate_bytes {} (not read)",
                    file.source, before.0, self.max_bytes
                ),
            );
            return Next::Rejected(file, r);
        }
        match std::fs::read(&file.path) {
            Ok(b) => file.bytes = b,
            Err(e) => {
                let r = Rejection::new(
                    RejectReason::Unreadable,
                    format!("{}: cannot read the file: {e}", file.source),
                );
                return Next::Rejected(file, r);
            }
        }
        let after = fingerprint(&file.path).ok();
        if after != Some(before) || file.bytes.len() as u64 != before.0 {
            tracing::info!(source = %file.source, "file changed while read: left for a later scan");
            self.unsettled += 1;
            return Next::Idle;
        }
        Next::Plate(file)
    }
}

impl Source for Inbox {
    type Input = InboxFile;

    fn next(&mut self, _stop: &AtomicBool, hooks: &dyn PlateHooks) -> Result<Next<InboxFile>> {
        if self.queue.is_empty() {
            if self.scanned {
                if self.once && self.unsettled == 0 {
                    return Ok(Next::Exhausted);
                }
                std::thread::sleep(self.poll);
            }
            self.scan()?;
            hooks.lag(INBOX_TOPIC, 0, backlog(self.queue.len() + self.unsettled));
        }
        let Some(path) = self.queue.pop_front() else {
            return Ok(Next::Idle);
        };
        hooks.lag(INBOX_TOPIC, 0, backlog(self.queue.len() + self.unsettled));
        Ok(self.take(path))
    }

    /// Move a published plate's file to `done/`. A dead letter was already
    /// moved to `dlq/` by the sink; if that move failed, the file is still
    /// here and is skipped for the rest of the run.
    fn acknowledge(
        &mut self,
        input: &InboxFile,
        outcome: Outcome,
        hooks: &dyn PlateHooks,
    ) -> Result<()> {
        if let Outcome::Rejected(_) = outcome {
            if input.path.symlink_metadata().is_ok() {
                tracing::error!(
                    source = %input.source,
                    "dead letter could not be moved to dlq/: the file is skipped until restart"
                );
                self.skipped.insert(input.path.clone());
            }
            return Ok(());
        }
        let done = self.done.join(input.path.file_name().unwrap_or_default());
        let t = Instant::now();
        let moved = std::fs::rename(&input.path, &done);
        if moved.is_ok() {
            sync_dir(&self.done);
            sync_dir(&self.dir);
        }
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
    /// The outbox of `cfg` (creating it), with the temporary files a killed
    /// daemon left behind removed.
    pub fn open(cfg: &Config) -> Result<Outbox> {
        let sc = &cfg.serve;
        std::fs::create_dir_all(&sc.outbox)
            .with_context(|| format!("cannot create {}", sc.outbox.display()))?;
        let outbox = Outbox {
            dir: sc.outbox.clone(),
            dlq: sc.inbox.join("dlq"),
        };
        outbox.clean_temporaries();
        Ok(outbox)
    }

    /// Remove `*.tmp-<pid>` (table writes) and `.*.tmp` (QC records) left
    /// by a daemon killed mid-write, in the outbox and its `g<N>/`
    /// directories. Only this daemon writes the outbox.
    fn clean_temporaries(&self) {
        Outbox::clean_temporaries_in(&self.dir);
        // The outputs of a new generation (`<outbox>/g<N>/`).
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in rd.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().to_string();
            let generation = name
                .strip_prefix('g')
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if generation && e.path().is_dir() {
                Outbox::clean_temporaries_in(&e.path());
            }
        }
    }

    fn clean_temporaries_in(dir: &Path) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().to_string();
            let pid_tmp = name
                .rsplit_once(".tmp-")
                .is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()));
            let dot_tmp = name.starts_with('.') && name.ends_with(".tmp");
            if pid_tmp || dot_tmp {
                match std::fs::remove_file(e.path()) {
                    Ok(()) => {
                        tracing::info!(file = %name, "removed a temporary file left in the outbox")
                    }
                    Err(err) => {
                        tracing::warn!(file = %name, error = %err, "cannot remove a temporary file in the outbox")
                    }
                }
            }
        }
    }

    /// Write the reason and move the file to `dlq/`, fsyncing both.
    fn move_to_dlq(&self, input: &InboxFile, rejection: &Rejection) -> Result<()> {
        let name = input.path.file_name().unwrap_or_default();
        let dest = self.dlq.join(name);
        let mut why = dest.clone().into_os_string();
        why.push(".reason.txt");
        let why = PathBuf::from(why);
        std::fs::write(&why, format!("{rejection}\n"))
            .and_then(|()| std::fs::File::open(&why)?.sync_all())
            .with_context(|| format!("cannot write {}", why.display()))?;
        std::fs::rename(&input.path, &dest)
            .with_context(|| format!("cannot move {} to dlq/", input.source))?;
        sync_dir(&self.dlq);
        if let Some(inbox) = input.path.parent() {
            sync_dir(inbox);
        }
        Ok(())
    }
}

/// Write `bytes` to `path` durably: temp file, fsync, rename, fsync the
/// directory.
fn write_durable(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, dir.join(name)).with_context(|| format!("cannot install {name}"))?;
    sync_dir(dir);
    Ok(())
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
        let name = output_name(&plate.plate);
        table::write_table(&self.dir.join(format!("{name}.parquet")), &out.table)?;
        write_durable(
            &self.dir,
            &format!("{name}.qc.json"),
            &serde_json::to_vec_pretty(&out.qc)?,
        )?;
        Ok(Delivery::Durable)
    }

    /// The new generation's output (`balans realign`): the same files in
    /// `<outbox>/g<N>/` (`N` = its generation), so the live outputs keep
    /// their names.
    fn publish_next(
        &mut self,
        _input: &InboxFile,
        plate: &DecodedPlate,
        out: &Corrected,
        _stop: &AtomicBool,
    ) -> Result<Delivery> {
        write_generation_output(&self.dir, &plate.plate, out)?;
        Ok(Delivery::Durable)
    }

    /// Move the file to `dlq/` with its reason. When that fails (the file
    /// cannot be moved, `dlq/` refuses the reason), the error is logged and
    /// the inbox skips the file for the rest of the run
    /// ([`Inbox::acknowledge`]): a plate never stops the daemon.
    fn dead_letter(
        &mut self,
        input: &InboxFile,
        rejection: &Rejection,
        _stop: &AtomicBool,
    ) -> Result<Delivery> {
        if let Err(e) = self.move_to_dlq(input, rejection) {
            tracing::error!(
                source = %input.source,
                reason = %rejection.reason,
                error = %format!("{e:#}"),
                "cannot dead-letter the file; it is skipped until restart"
            );
        }
        Ok(Delivery::Durable)
    }
}

/// `<outbox>/g<N>/`: where the outputs of a generation under evaluation
/// go (`N` from the output's `model_version`, `g<N>.p<plates>`).
pub fn generation_outbox(outbox: &Path, version: &str) -> PathBuf {
    let generation = version.split('.').next().unwrap_or("g0");
    outbox.join(generation)
}

/// Write a new generation's output of `plate` into
/// [`generation_outbox`] (created when missing), like the live outputs.
pub fn write_generation_output(outbox: &Path, plate: &str, out: &Corrected) -> Result<()> {
    let dir = generation_outbox(outbox, &out.qc.model_version);
    if !dir.is_dir() {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        sync_dir(outbox);
    }
    let name = output_name(plate);
    table::write_table(&dir.join(format!("{name}.parquet")), &out.table)?;
    write_durable(
        &dir,
        &format!("{name}.qc.json"),
        &serde_json::to_vec_pretty(&out.qc)?,
    )
}

/// Longest encoded plate id used as is in an output name; longer ones are
/// cut and suffixed with a hash of the whole id. 200 bytes leave room for
/// `.qc.json`, `.parquet.tmp-<pid>` and the QC temp name's dot under the
/// usual 255-byte limit of a file name.
const MAX_NAME_BYTES: usize = 200;

/// The output file stem of a plate id, injective and always a valid file
/// name: bytes outside `[A-Za-z0-9._@-]` (and `%` itself) are
/// percent-encoded (`X/Y` -> `X%2FY`, `X_Y` stays `X_Y`), and an encoding
/// over [`MAX_NAME_BYTES`] is cut to 180 bytes plus `~` and the 16-hex-digit
/// FNV-1a hash of the whole id (`~` never occurs in an encoding, so a cut
/// name cannot equal an uncut one). A leading `.` is encoded too, so no
/// output is a hidden file.
pub fn output_name(plate: &str) -> String {
    let mut out = String::with_capacity(plate.len());
    for (i, b) in plate.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || b"_-@".contains(&b) || (b == b'.' && i > 0);
        if plain {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.len() > MAX_NAME_BYTES {
        out.truncate(180);
        out.push_str(&format!("~{:016x}", content_hash(plate.as_bytes())));
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_names_are_injective_short_and_plain() {
        assert_eq!(output_name("Batch01_Plate04"), "Batch01_Plate04");
        assert_eq!(output_name("X/Y"), "X%2FY");
        assert_eq!(output_name("X_Y"), "X_Y");
        assert_eq!(output_name("X%2FY"), "X%252FY");
        assert_eq!(output_name(".."), "%2E.");
        assert_eq!(output_name("a b.c"), "a%20b.c");
        let long = "p".repeat(300);
        let other = format!("{}q", "p".repeat(299));
        let (a, b) = (output_name(&long), output_name(&other));
        assert!(a.len() <= MAX_NAME_BYTES && a.contains('~'), "{a}");
        assert_ne!(a, b);
        assert_eq!(output_name(&"p".repeat(200)), "p".repeat(200));
    }

    #[test]
    fn temporary_names_are_not_plates() {
        for n in ["a.parquet", "b.csv.gz", "c.arrow"] {
            assert!(is_plate_name(Path::new(n)), "{n}");
        }
        for n in [
            ".a.parquet",
            "a.parquet.tmp",
            "a.csv.part",
            "a.csv.crdownload",
            "a.parquet.tmp-123",
            "a.csv~",
            "notes.txt",
        ] {
            assert!(!is_plate_name(Path::new(n)), "{n}");
        }
    }
}
