//! Provenance: what made an output, written into every Parquet output of
//! `balans correct` and `balans apply` (and the Python package) and into
//! every saved model, so that the run can be repeated from the file alone.
//!
//! Three key-value pairs ([`Provenance::metadata`]):
//!
//! | key              | value                                              |
//! |------------------|----------------------------------------------------|
//! | `balans.version` | the crate version that wrote the file              |
//! | `balans.config`  | the resolved configuration as TOML: the `[method]`, `[correct]` and `[qc]` sections after file, environment and flags |
//! | `balans.seed`    | the random seed (`[method] seed`), also in the TOML |
//!
//! The configuration text is a valid `--config` file: `balans correct
//! --config <that text> -i IN -o OUT` repeats the run. The daemon's
//! `[serve]`, `[kafka]` and `[metrics]` sections are left out (they do not
//! change a value, and Kafka properties may hold credentials).

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::Config;

/// Key of the balans version.
pub const KEY_VERSION: &str = "balans.version";
/// Key of the resolved configuration (TOML).
pub const KEY_CONFIG: &str = "balans.config";
/// Key of the seed.
pub const KEY_SEED: &str = "balans.seed";

/// How an output or a saved model was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// Version of balans that made it (`CARGO_PKG_VERSION`).
    pub version: String,
    /// The resolved configuration as TOML text (`[method]`, `[correct]`,
    /// `[qc]`): a valid `--config` file.
    pub config: String,
    /// The random seed of the fit.
    pub seed: u64,
}

impl Provenance {
    /// The provenance of a run with the resolved configuration `cfg`, by
    /// this build.
    pub fn from_config(cfg: &Config) -> Result<Provenance> {
        let mut doc = toml::Table::new();
        doc.insert(
            "method".into(),
            toml::Value::try_from(&cfg.method).context("serialising [method]")?,
        );
        doc.insert(
            "correct".into(),
            toml::Value::try_from(&cfg.correct).context("serialising [correct]")?,
        );
        doc.insert(
            "qc".into(),
            toml::Value::try_from(&cfg.qc).context("serialising [qc]")?,
        );
        Ok(Provenance {
            version: env!("CARGO_PKG_VERSION").to_string(),
            config: toml::to_string(&doc).context("serialising the configuration")?,
            seed: cfg.method.seed,
        })
    }

    /// The configuration the text describes (defaults for the sections it
    /// leaves out). Refuses text that is not a valid configuration.
    pub fn resolved_config(&self) -> Result<Config> {
        let doc: toml::Table = self
            .config
            .parse()
            .context("the provenance's configuration is not valid TOML")?;
        let mut full = toml::Table::try_from(Config::default())?;
        for (k, v) in doc {
            full.insert(k, v);
        }
        let cfg: Config = toml::Value::Table(full)
            .try_into()
            .context("the provenance's configuration is not a balans configuration")?;
        cfg.method.validate()?;
        cfg.qc.validate()?;
        Ok(cfg)
    }

    /// The Parquet (and Arrow schema) key-value pairs: `balans.version`,
    /// `balans.config`, `balans.seed`.
    pub fn metadata(&self) -> Vec<(String, String)> {
        vec![
            (KEY_VERSION.into(), self.version.clone()),
            (KEY_CONFIG.into(), self.config.clone()),
            (KEY_SEED.into(), self.seed.to_string()),
        ]
    }

    /// Read the provenance back from key-value pairs (a file's metadata);
    /// `None` when a key is missing or the seed is not a number.
    pub fn from_metadata<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Option<Provenance> {
        let (mut version, mut config, mut seed) = (None, None, None);
        for (k, v) in pairs {
            match k {
                KEY_VERSION => version = Some(v.to_string()),
                KEY_CONFIG => config = Some(v.to_string()),
                KEY_SEED => seed = v.parse().ok(),
                _ => {}
            }
        }
        Some(Provenance {
            version: version?,
            config: config?,
            seed: seed?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_through_the_metadata() {
        let mut cfg = Config::default();
        cfg.method.k = 7;
        cfg.method.seed = 1234;
        cfg.correct.batch_col = Some("Metadata_Week".into());
        cfg.correct.exclude = Some("_Location_|_Center_".into());
        cfg.correct.max_abs_value = f64::INFINITY;
        cfg.kafka
            .properties
            .insert("sasl.password".into(), "secret".into());
        let p = Provenance::from_config(&cfg).unwrap();
        assert!(!p.config.contains("secret"), "no [kafka] section");
        let md = p.metadata();
        let back =
            Provenance::from_metadata(md.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.seed, 1234);
        let again = back.resolved_config().unwrap();
        assert_eq!(again.method, cfg.method);
        assert_eq!(again.correct, cfg.correct);
        assert_eq!(again.qc, cfg.qc);
        assert_eq!(again.kafka, Default::default());
        assert!(Provenance::from_metadata([("balans.version", "1")]).is_none());
    }
}
