//! The configuration of a Python call: the same [`Config`] the CLI resolves.
//!
//! The CLI's precedence is defaults < `--config FILE` < `BALANS_*`
//! environment < flags ([`Config::load`] does the first three). The Python
//! functions take the place of the flags: their keyword arguments arrive
//! here as one JSON object `{"correct": {..}, "method": {..}, "qc": {..}}`
//! with the config file's key names, and are merged over the loaded
//! configuration before it is deserialised again. Unknown keys and bad
//! values are therefore refused with the config file's own messages
//! (`unknown field `kk``, `gain_shrinkage must be >= 0`, ...).

use std::path::Path;

use anyhow::{Context, Result};
use balans::Config;

/// [`Config::load`] of `config` (file, then environment), then the keyword
/// overrides in `overrides_json` (an object of sections), validated.
pub fn resolve(config: Option<&Path>, overrides_json: &str) -> Result<Config> {
    let base = Config::load(config)?;
    let over: serde_json::Value =
        serde_json::from_str(overrides_json).context("keyword arguments are not valid JSON")?;
    let serde_json::Value::Object(sections) = over else {
        anyhow::bail!("keyword arguments must be an object of sections");
    };
    let mut doc = toml::Table::try_from(&base).context("serialising the configuration")?;
    for (section, keys) in sections {
        let serde_json::Value::Object(keys) = keys else {
            anyhow::bail!("[{section}] overrides must be an object");
        };
        let table = doc
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .with_context(|| format!("[{section}] is not a section of the configuration"))?;
        for (key, value) in keys {
            let Some(mut value) = toml_value(&value) else {
                continue; // None = keep the configured value
            };
            // An integer where the key is a float (budget=1): as the
            // environment overrides do.
            // Python's float("inf") travels as the string "inf" (JSON has
            // no infinity).
            match (table.get(&key), &value) {
                (Some(toml::Value::Float(_)), toml::Value::Integer(i)) => {
                    value = toml::Value::Float(*i as f64);
                }
                (Some(toml::Value::Float(_)), toml::Value::String(s)) => {
                    if let Ok(f) = s.parse::<f64>() {
                        value = toml::Value::Float(f);
                    }
                }
                _ => {}
            }
            table.insert(key, value);
        }
    }
    let cfg: Config = toml::Value::Table(doc)
        .try_into()
        .context("invalid keyword argument")?;
    cfg.method
        .validate()
        .context("invalid keyword argument (method options)")?;
    cfg.qc
        .validate()
        .context("invalid keyword argument (qc options)")?;
    Ok(cfg)
}

/// A JSON scalar as TOML; `None` for null (not set).
fn toml_value(v: &serde_json::Value) -> Option<toml::Value> {
    Some(match v {
        serde_json::Value::Null => return None,
        serde_json::Value::Bool(b) => toml::Value::Boolean(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => toml::Value::String(s.clone()),
        serde_json::Value::Array(a) => {
            toml::Value::Array(a.iter().filter_map(toml_value).collect())
        }
        serde_json::Value::Object(o) => toml::Value::Table(
            o.iter()
                .filter_map(|(k, v)| toml_value(v).map(|v| (k.clone(), v)))
                .collect(),
        ),
    })
}
