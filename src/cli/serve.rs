//! `balans serve`: the daemon. Without a broker (the embedded default) it
//! watches a local inbox directory; with `--brokers` (or `[kafka] brokers`,
//! `BALANS_KAFKA__BROKERS`) it consumes plates from Kafka; see docs/serve.md.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;

use balans::config::Config;
use balans::serve::dir::DirServer;
#[cfg(feature = "kafka")]
use balans::serve::kafka::KafkaServer;

/// Options of `balans serve` (keys of `[serve]`, `[correct]`, `[method]`).
#[derive(Args, Debug, Clone, Default)]
pub struct ServeArgs {
    /// TOML config file.
    #[arg(long, env = "BALANS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Reference table for a warm start (ignored when the state directory has state).
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// Saved model (`balans correct --save-model DIR`) to warm-start from instead of a reference table ([serve] model; ignored when the state directory has state; not with --reference).
    #[arg(long, conflicts_with = "reference")]
    pub model: Option<PathBuf>,
    /// State directory (snapshot + write-ahead log) [default: state].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Inbox directory watched for plate files [default: inbox].
    #[arg(long)]
    pub inbox: Option<PathBuf>,
    /// Outbox directory for corrected plates and QC [default: outbox].
    #[arg(long)]
    pub outbox: Option<PathBuf>,
    /// Batch column of the plates (and of the reference table).
    #[arg(long)]
    pub batch_col: Option<String>,
    /// Negative controls COLUMN=VALUE.
    #[arg(long)]
    pub control: Option<String>,
    /// Regex of feature columns passed through uncorrected.
    #[arg(long)]
    pub exclude: Option<String>,
    /// Listen address of /metrics, /healthz and /readyz, e.g. 127.0.0.1:9464; "off" disables ([metrics] listen) [default: off].
    #[arg(long)]
    pub metrics_addr: Option<String>,
    /// Milliseconds between inbox scans [default: 500].
    #[arg(long)]
    pub poll_ms: Option<u64>,
    /// Plates between snapshots [default: 50].
    #[arg(long)]
    pub snapshot_every: Option<usize>,
    /// Milliseconds a plate file must be unchanged before it is read
    /// (directory mode; [serve] settle_ms) [default: 1000].
    #[arg(long)]
    pub settle_ms: Option<u64>,
    /// Plate files larger than this many bytes are dead-lettered unread
    /// (directory mode; [serve] max_plate_bytes) [default: 268435456].
    #[arg(long)]
    pub max_plate_bytes: Option<u64>,
    /// Process what is in the inbox, then exit (directory mode only).
    #[arg(long)]
    pub once: bool,
    /// Kafka bootstrap servers (host:port,...): consume plates from
    /// `[kafka] plates_topic` instead of watching the inbox. Other Kafka keys
    /// (topics, limits, librdkafka properties): `[kafka]` in the config file
    /// or `BALANS_KAFKA__<KEY>`.
    #[arg(long)]
    pub brokers: Option<String>,
    /// Kafka consumer group [default: balans].
    #[arg(long)]
    pub group_id: Option<String>,
}

/// Run the daemon until SIGTERM/SIGINT (or once).
pub fn run(a: ServeArgs) -> Result<()> {
    let mut cfg = Config::load(a.config.as_deref())?;
    if let Some(v) = &a.metrics_addr {
        cfg.metrics.listen = v.clone();
    }
    let s = &mut cfg.serve;
    if let Some(v) = &a.reference {
        s.reference = Some(v.clone());
    }
    if let Some(v) = &a.model {
        s.model = Some(v.clone());
    }
    if let Some(v) = &a.state_dir {
        s.state_dir = v.clone();
    }
    if let Some(v) = &a.inbox {
        s.inbox = v.clone();
    }
    if let Some(v) = &a.outbox {
        s.outbox = v.clone();
    }
    if let Some(v) = a.poll_ms {
        s.poll_ms = v;
    }
    if let Some(v) = a.snapshot_every {
        s.snapshot_every = v;
    }
    if let Some(v) = a.settle_ms {
        s.settle_ms = v;
    }
    if let Some(v) = a.max_plate_bytes {
        s.max_plate_bytes = v;
    }
    let c = &mut cfg.correct;
    if let Some(v) = &a.batch_col {
        c.batch_col = Some(v.clone());
    }
    if let Some(v) = &a.control {
        c.control = Some(v.clone());
    }
    if let Some(v) = &a.exclude {
        c.exclude = Some(v.clone());
    }
    if let Some(v) = &a.brokers {
        cfg.kafka.brokers = v.clone();
    }
    if let Some(v) = &a.group_id {
        cfg.kafka.group_id = v.clone();
    }
    anyhow::ensure!(
        cfg.correct.batch_col.is_some(),
        "no batch column: pass --batch-col (or [correct] batch_col / BALANS_CORRECT__BATCH_COL)"
    );
    // The metrics listener (every mode) starts before the state is
    // restored: /healthz answers and /readyz says 503 during a long restore
    // or warm start.
    let telemetry = balans::serve::telemetry::Telemetry::new()?;
    let _http = match cfg.metrics.address()? {
        Some(addr) => Some(telemetry.serve_http(addr)?),
        None => None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("cannot install signal handlers")?;
    }
    let report = if cfg.kafka.brokers.is_empty() {
        tracing::info!(inbox = %cfg.serve.inbox.display(), outbox = %cfg.serve.outbox.display(), "balans serve (directory mode)");
        DirServer::open_with(cfg, telemetry)?.run(stop, a.once)?
    } else {
        anyhow::ensure!(!a.once, "--once applies to the directory mode only");
        kafka_mode(cfg, telemetry, stop)?
    };
    tracing::info!(
        corrected = report.corrected,
        replayed = report.replayed,
        rejected = report.rejected,
        "stopped"
    );
    println!(
        "balans serve: corrected {} plates, re-published {}, rejected {}",
        report.corrected, report.replayed, report.rejected
    );
    Ok(())
}

/// The Kafka mode (`[kafka] brokers` set).
#[cfg(feature = "kafka")]
fn kafka_mode(
    cfg: Config,
    telemetry: balans::serve::telemetry::Telemetry,
    stop: Arc<AtomicBool>,
) -> Result<balans::serve::outcome::RunReport> {
    KafkaServer::open_with(cfg, Box::new(telemetry))?.run(stop)
}

/// The Kafka mode asked for in a build without it (`--no-default-features`).
#[cfg(not(feature = "kafka"))]
fn kafka_mode(
    cfg: Config,
    _telemetry: balans::serve::telemetry::Telemetry,
    _stop: Arc<AtomicBool>,
) -> Result<balans::serve::outcome::RunReport> {
    anyhow::bail!(
        "balans was built without Kafka support (cargo feature `kafka`), but the configuration sets [kafka] brokers = {:?}; rebuild with the default features or leave brokers empty for the directory mode",
        cfg.kafka.brokers
    )
}
