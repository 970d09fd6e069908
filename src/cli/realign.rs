//! `balans realign`: build a new generation beside the live one (a refit
//! on the published plates, or a window of them), or promote it
//! (`--promote`). See docs/serve.md, "Realignment: new generations".

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use balans::config::Config;
use balans::serve::generations;
use balans::serve::realign::{realign, RealignOptions, Window};

/// Options of `balans realign` (keys of `[serve]`, `[correct]`, `[method]`).
#[derive(Args, Debug, Clone, Default)]
pub struct RealignArgs {
    /// TOML config file (the daemon's).
    #[arg(long, env = "BALANS_CONFIG")]
    pub config: Option<PathBuf>,
    /// The daemon's state directory [default: state].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Refit on the last N published plates only (default: every published plate).
    #[arg(long, conflicts_with_all = ["plates", "batches"])]
    pub last: Option<usize>,
    /// Refit on these published plates only (comma-separated ids).
    #[arg(long, value_delimiter = ',', conflicts_with = "batches")]
    pub plates: Vec<String>,
    /// Refit on the published plates of these batches only (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub batches: Vec<String>,
    /// Files or directories holding the plates' raw profiles (repeatable)
    /// [default: <inbox>/done in directory mode; the plates topic, read again from its start, in Kafka mode].
    #[arg(long = "plates-from")]
    pub plates_from: Vec<PathBuf>,
    /// Inbox of the directory mode (its done/ holds the published plates) [default: inbox].
    #[arg(long)]
    pub inbox: Option<PathBuf>,
    /// Outbox the refitted plates' new outputs go to, under g<N>/ [default: outbox in directory mode; in Kafka mode they are produced to the aligned and QC topics instead].
    #[arg(long)]
    pub outbox: Option<PathBuf>,
    /// Do not write (or produce) the refitted plates' new outputs.
    #[arg(long)]
    pub no_emit: bool,
    /// Reference table fitted with the plates ([serve] reference).
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// Fit the plates without the reference table (even when --reference or [serve] reference names one).
    #[arg(long)]
    pub no_reference: bool,
    /// Batch column of the plates.
    #[arg(long)]
    pub batch_col: Option<String>,
    /// Negative controls COLUMN=VALUE.
    #[arg(long)]
    pub control: Option<String>,
    /// Regex of feature columns passed through uncorrected.
    #[arg(long)]
    pub exclude: Option<String>,
    /// Switch: make the new generation the live one (the daemon does it
    /// between plates, or at its next start). Builds nothing.
    #[arg(long, conflicts_with_all = ["last", "plates", "batches", "plates_from"])]
    pub promote: bool,
    /// Kafka bootstrap servers ([kafka] brokers): Kafka mode, the plates are read again from [kafka] plates_topic.
    #[arg(long)]
    pub brokers: Option<String>,
    /// Print what was done as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Run `balans realign`.
pub fn run(a: RealignArgs) -> Result<()> {
    let mut cfg = Config::load(a.config.as_deref())?;
    let s = &mut cfg.serve;
    if let Some(v) = &a.state_dir {
        s.state_dir = v.clone();
    }
    if let Some(v) = &a.inbox {
        s.inbox = v.clone();
    }
    if let Some(v) = &a.outbox {
        s.outbox = v.clone();
    }
    if let Some(v) = &a.reference {
        s.reference = Some(v.clone());
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
    if a.promote {
        generations::request_promotion(&cfg.serve.state_dir)?;
        println!(
            "balans realign: promotion requested ({}); the daemon switches between plates, or at its next start",
            generations::next_dir(&cfg.serve.state_dir)
                .join(generations::PROMOTE)
                .display()
        );
        return Ok(());
    }
    anyhow::ensure!(
        cfg.correct.batch_col.is_some(),
        "no batch column: pass --batch-col (or [correct] batch_col / BALANS_CORRECT__BATCH_COL)"
    );
    let dir_mode = cfg.kafka.brokers.is_empty();
    let from_topic = a.plates_from.is_empty() && !dir_mode;
    let sources = if !a.plates_from.is_empty() {
        a.plates_from.clone()
    } else if dir_mode {
        vec![cfg.serve.inbox.join("done")]
    } else {
        Vec::new()
    };
    let window = if let Some(n) = a.last {
        Window::Last(n)
    } else if !a.plates.is_empty() {
        Window::Plates(a.plates.clone())
    } else if !a.batches.is_empty() {
        Window::Batches(a.batches.clone())
    } else {
        Window::All
    };
    let emit = match (&a.outbox, a.no_emit, dir_mode) {
        (_, true, _) => None,
        (Some(o), false, _) => Some(o.clone()),
        (None, false, true) => Some(cfg.serve.outbox.clone()),
        (None, false, false) => None,
    };
    let opts = RealignOptions {
        window,
        sources,
        from_topic,
        with_reference: !a.no_reference,
        emit: emit.clone(),
        emit_topics: !dir_mode && !a.no_emit && a.outbox.is_none(),
    };
    let rec = realign(&cfg, &opts)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rec)?);
        return Ok(());
    }
    println!(
        "balans realign: generation {} ({}) installed in {}, beside the live {}",
        rec.generation,
        rec.version,
        generations::next_dir(&cfg.serve.state_dir).display(),
        rec.live_version
    );
    println!(
        "fitted on {} plate(s) and {} reference row(s); {} rows",
        rec.plates.len(),
        rec.reference_rows,
        rec.rows
    );
    if !rec.plates.is_empty() {
        println!("plate\tbatch\trows\tdrift\tmean_shift\tmax_abs_difference");
        for p in &rec.plates {
            let (d, m, x) = match &p.drift {
                Some(g) => (
                    g.drift.map_or("n/a".into(), |v| format!("{v:.6}")),
                    format!("{:.6}", g.mean_shift),
                    format!("{:.6}", g.max_abs_difference),
                ),
                None => ("n/a".into(), "n/a".into(), "n/a".into()),
            };
            println!("{}\t{}\t{}\t{d}\t{m}\t{x}", p.plate, p.batch, p.rows);
        }
    }
    if let Some(o) = &emit {
        println!(
            "new outputs of the refitted plates: {}",
            o.join(format!("g{}", rec.generation)).display()
        );
    } else if !dir_mode && !a.no_emit {
        println!(
            "new outputs of the refitted plates: produced to {} and {}",
            cfg.kafka.aligned_topic, cfg.kafka.qc_topic
        );
    }
    println!("switch with `balans realign --promote` when ready");
    Ok(())
}
