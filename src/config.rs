//! Configuration: TOML file, environment overrides, command-line flags.
//!
//! Precedence, lowest first: built-in defaults < `--config FILE` (TOML) <
//! environment variables `BALANS_<SECTION>__<KEY>` (e.g.
//! `BALANS_METHOD__K=20`, `BALANS_CORRECT__BATCH_COL=Metadata_Week`) <
//! command-line flags. `config/balans.toml` lists every key with its
//! default. Unknown keys are errors, so a typo cannot be silently ignored.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

pub use crate::io::layout::CorrectConfig;
use crate::method::params::Params;

/// Prefix of environment overrides.
pub(crate) const ENV_PREFIX: &str = "BALANS_";

/// `[metrics]` configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the HTTP listener (`/metrics`, `/healthz`, `/readyz`),
    /// e.g. `127.0.0.1:9464` or `0.0.0.0:9464`; empty or `off` = no listener.
    pub listen: String,
}

impl MetricsConfig {
    /// The address to bind, or `None` when disabled.
    pub fn address(&self) -> Result<Option<SocketAddr>> {
        let s = self.listen.trim();
        if s.is_empty() || s.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let addr = s
            .parse::<SocketAddr>()
            .with_context(|| format!("[metrics] listen = {s:?} is not HOST:PORT (or \"off\")"))?;
        Ok(Some(addr))
    }
}

/// Options of `balans serve` (the embedded directory mode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// Directory watched for plate files (.parquet, .arrow/.ipc, .csv, .csv.gz).
    pub inbox: std::path::PathBuf,
    /// Directory receiving `<plate>.parquet` and `<plate>.qc.json`.
    pub outbox: std::path::PathBuf,
    /// Directory of the durable state (snapshot + write-ahead log).
    pub state_dir: std::path::PathBuf,
    /// Optional reference table for a warm start (fitted offline).
    pub reference: Option<std::path::PathBuf>,
    /// Optional saved model (`balans correct --save-model`) to warm-start
    /// from instead of fitting a reference; not together with `reference`.
    pub model: Option<std::path::PathBuf>,
    /// Milliseconds between inbox scans.
    pub poll_ms: u64,
    /// Plates between full snapshots (the log is replayed in between).
    pub snapshot_every: usize,
    /// An inbox file is picked up only once it is this many milliseconds
    /// old (by modification time) and unchanged while read: a file written
    /// in place is not read half-written.
    pub settle_ms: u64,
    /// Largest plate file accepted (bytes on disk); a bigger file goes to
    /// `dlq/` (reason `oversized`) without being read. The directory mode's
    /// counterpart of `[kafka] max_plate_bytes`.
    pub max_plate_bytes: u64,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            inbox: "inbox".into(),
            outbox: "outbox".into(),
            state_dir: "state".into(),
            reference: None,
            model: None,
            poll_ms: 500,
            snapshot_every: 50,
            settle_ms: 1000,
            max_plate_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Options of `balans serve` in Kafka mode (used when `brokers` is set).
/// See `docs/serve.md` for the topic contract.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port]`. Empty = directory mode.
    pub brokers: String,
    /// Consumer group of the daemon.
    pub group_id: String,
    /// Input topic: one message (or numbered chunks) per plate.
    pub plates_topic: String,
    /// Output topic: corrected plates.
    pub aligned_topic: String,
    /// Output topic: one JSON QC record per plate.
    pub qc_topic: String,
    /// Dead-letter topic: rejected inputs with a reason header.
    pub dlq_topic: String,
    /// Largest message the daemon produces; a bigger aligned plate is split
    /// into numbered chunks. Also sizes the client's fetch/produce limits.
    pub max_message_bytes: usize,
    /// Largest plate accepted (one message or all its chunks together);
    /// bigger plates are dead-lettered.
    pub max_plate_bytes: usize,
    /// An incomplete chunked plate is dead-lettered after this long.
    pub chunk_timeout_ms: u64,
    /// Consumer poll timeout (also the shutdown reaction time, and the
    /// broker's longest fetch wait: librdkafka `fetch.wait.max.ms`).
    pub poll_ms: u64,
    /// How long to wait for the broker to acknowledge a plate's outputs
    /// before retrying them (librdkafka `message.timeout.ms`).
    pub delivery_timeout_ms: u64,
    /// librdkafka properties passed through unchanged (TLS, SASL, timeouts),
    /// e.g. `"security.protocol" = "SASL_SSL"`. They override the daemon's
    /// own settings.
    pub properties: std::collections::BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: String::new(),
            group_id: "balans".into(),
            plates_topic: "balans.plates".into(),
            aligned_topic: "balans.aligned".into(),
            qc_topic: "balans.qc".into(),
            dlq_topic: "balans.dlq".into(),
            max_message_bytes: 1_000_000,
            max_plate_bytes: 256 * 1024 * 1024,
            chunk_timeout_ms: 300_000,
            poll_ms: 100,
            delivery_timeout_ms: 30_000,
            properties: Default::default(),
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Method parameters.
    pub method: Params,
    /// `/metrics`, `/healthz`, `/readyz` listener (`balans serve`).
    pub metrics: MetricsConfig,
    /// Per-plate QC outlier thresholds.
    pub qc: crate::qc::QcConfig,
    /// `balans correct` options (table layout; also used by `serve`).
    pub correct: CorrectConfig,
    /// `balans serve` options.
    pub serve: ServeConfig,
    /// `balans serve` Kafka mode.
    pub kafka: KafkaConfig,
}

/// Parse an environment value as the TOML scalar it looks like.
fn env_value(raw: &str) -> toml::Value {
    if let Ok(i) = raw.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    if let Ok(f) = raw.parse::<f64>() {
        return toml::Value::Float(f);
    }
    match raw {
        "true" => toml::Value::Boolean(true),
        "false" => toml::Value::Boolean(false),
        _ => toml::Value::String(raw.to_string()),
    }
}

/// Apply `BALANS_<SECTION>__<KEY>=value` pairs to a TOML document.
/// Only variables with a double underscore are config overrides.
pub(crate) fn apply_env_overrides(
    doc: &mut toml::Table,
    vars: impl Iterator<Item = (String, String)>,
) -> Result<()> {
    for (name, raw) in vars {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let Some((section, key)) = rest.split_once("__") else {
            continue;
        };
        let section = section.to_ascii_lowercase();
        let key = key.to_ascii_lowercase();
        let table = doc
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let table = table
            .as_table_mut()
            .with_context(|| format!("environment {name}: [{section}] is not a table"))?;
        // Floats given as integers ("0.3" vs "1") are coerced by serde below.
        let mut value = env_value(&raw);
        if let (Some(toml::Value::Float(_)), toml::Value::Integer(i)) = (table.get(&key), &value) {
            value = toml::Value::Float(*i as f64);
        }
        table.insert(key, value);
    }
    Ok(())
}

impl Config {
    /// Load defaults, then the file (if any), then environment overrides.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        Self::load_with_env(path, std::env::vars())
    }

    /// [`Config::load`] with an explicit environment (for tests).
    pub fn load_with_env(
        path: Option<&Path>,
        vars: impl Iterator<Item = (String, String)>,
    ) -> Result<Config> {
        Self::load_over(&Config::default(), path, vars)
    }

    /// [`Config::load_with_env`] with `base` in place of the built-in
    /// defaults: the file and the environment override it (`balans apply`
    /// starts from the saved model's configuration).
    pub fn load_over(
        base: &Config,
        path: Option<&Path>,
        vars: impl Iterator<Item = (String, String)>,
    ) -> Result<Config> {
        let mut doc: toml::Table =
            toml::Table::try_from(base).context("serialising the base configuration")?;
        if let Some(p) = path {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read config file {}", p.display()))?;
            let file: toml::Table = text
                .parse()
                .with_context(|| format!("config file {} is not valid TOML", p.display()))?;
            merge(&mut doc, file);
        }
        apply_env_overrides(&mut doc, vars)?;
        let source = || match path {
            Some(p) => format!(
                "invalid configuration (file {} or BALANS_* environment)",
                p.display()
            ),
            None => "invalid configuration (BALANS_* environment)".to_string(),
        };
        let cfg: Config = toml::Value::Table(doc).try_into().with_context(source)?;
        cfg.method.validate().with_context(source)?;
        cfg.qc.validate().with_context(source)?;
        cfg.metrics.address().with_context(source)?;
        Ok(cfg)
    }
}

/// Deep-merge `over` into `base` (tables merge, other values replace).
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::profile::NonFinitePolicy;

    #[test]
    fn defaults_file_env_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.toml");
        std::fs::write(
            &p,
            "[method]\nk = 20\nbudget = 0.5\n[correct]\nbatch_col = \"Metadata_Week\"\n",
        )
        .unwrap();
        let env = vec![
            ("BALANS_METHOD__K".to_string(), "25".to_string()),
            ("BALANS_METHOD__BUDGET".to_string(), "1".to_string()),
            (
                "BALANS_CORRECT__NON_FINITE".to_string(),
                "impute".to_string(),
            ),
            ("BALANS_UNRELATED".to_string(), "x".to_string()),
        ];
        let c = Config::load_with_env(Some(&p), env.into_iter()).unwrap();
        assert_eq!(c.method.k, 25);
        assert_eq!(c.method.budget, 1.0);
        assert_eq!(c.method.m, Params::default().m);
        assert_eq!(c.correct.batch_col.as_deref(), Some("Metadata_Week"));
        assert_eq!(c.correct.non_finite, NonFinitePolicy::Impute);
    }

    #[test]
    fn non_finite_policy_spellings() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.toml");
        std::fs::write(&p, "[correct]\nnon_finite = \"drop-features\"\n").unwrap();
        let c = Config::load_with_env(Some(&p), std::iter::empty()).unwrap();
        assert_eq!(c.correct.non_finite, NonFinitePolicy::DropFeatures);
        let env = vec![(
            "BALANS_CORRECT__NON_FINITE".to_string(),
            "error".to_string(),
        )];
        let c = Config::load_with_env(Some(&p), env.into_iter()).unwrap();
        assert_eq!(c.correct.non_finite, NonFinitePolicy::Error);
        assert_eq!(
            Config::default().correct.non_finite,
            NonFinitePolicy::default()
        );
        let bad = vec![(
            "BALANS_CORRECT__NON_FINITE".to_string(),
            "drop_features".to_string(),
        )];
        let e = Config::load_with_env(None, bad.into_iter()).unwrap_err();
        assert!(format!("{e:#}").contains("drop-features"), "{e:#}");
    }

    #[test]
    fn unknown_key_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.toml");
        std::fs::write(&p, "[method]\nkk = 20\n").unwrap();
        let e = Config::load_with_env(Some(&p), std::iter::empty()).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("b.toml") && msg.contains("kk"), "{msg}");
    }

    #[test]
    fn out_of_range_value_is_an_error_naming_the_key() {
        let env = vec![(
            "BALANS_METHOD__GAIN_SHRINKAGE".to_string(),
            "-0.5".to_string(),
        )];
        let e = Config::load_with_env(None, env.into_iter()).unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("BALANS_") && msg.contains("gain_shrinkage must be >= 0"),
            "{msg}"
        );
        let ok = vec![("BALANS_METHOD__GAIN_SHRINKAGE".to_string(), "0".to_string())];
        let c = Config::load_with_env(None, ok.into_iter()).unwrap();
        assert_eq!(c.method.gain_shrinkage, 0.0);
    }

    #[test]
    fn shipped_config_file_matches_defaults() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/balans.toml");
        let c = Config::load_with_env(Some(&p), std::iter::empty()).unwrap();
        assert_eq!(c.method, Params::default());
        assert_eq!(c.kafka, KafkaConfig::default());
        assert_eq!(c.serve, ServeConfig::default());
    }

    #[test]
    fn kafka_env_overrides() {
        let env = vec![
            (
                "BALANS_KAFKA__BROKERS".to_string(),
                "127.0.0.1:9092".to_string(),
            ),
            (
                "BALANS_KAFKA__MAX_MESSAGE_BYTES".to_string(),
                "2000000".to_string(),
            ),
        ];
        let c = Config::load_with_env(None, env.into_iter()).unwrap();
        assert_eq!(c.kafka.brokers, "127.0.0.1:9092");
        assert_eq!(c.kafka.max_message_bytes, 2_000_000);
        assert_eq!(c.kafka.plates_topic, "balans.plates");
    }
}
