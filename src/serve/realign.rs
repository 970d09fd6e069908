//! `balans realign`: build a new generation — an offline refit on what the
//! live generation has published (all of it, or a window) — and install it
//! beside the live one ([`super::generations`]).
//!
//! 1. Read the live state without changing it (snapshot + write-ahead log;
//!    a torn last record is ignored, a daemon may be appending): which
//!    plates were published, in which order, with which content hash.
//! 2. Choose the window: every published plate, the last N, named plates,
//!    or the plates of named batches.
//! 3. Find their raw profiles in the given places (directory mode:
//!    `<inbox>/done/`, where the daemon moves every published plate file;
//!    Kafka mode: the plates topic read again from its start, or files);
//!    a plate counts only when its decoded content hashes to what the live
//!    generation recorded, so the refit uses exactly what was published.
//! 4. Fit them offline (`balans correct`'s fit), with the reference table
//!    (`[serve] reference`) unless told otherwise, in the live model's
//!    feature order, and seed a model from the fit whose generation is the
//!    live one's + 1 and whose plate records name the refitted plates
//!    (version `g<N>.p0`: the refit), so a plate sent again is a replay
//!    for the new generation too.
//! 5. Write its checkpoint into `STATE/next.tmp/` (snapshot, manifest,
//!    empty log, `realign.json`), fsync, and rename it to `STATE/next/`: a
//!    kill leaves no new generation, never half of one.
//! 6. Compare: each refitted plate's output under the new generation
//!    against what the live one published ([`GenerationDrift`]), printed and
//!    kept in `realign.json`; with `emit`, written to `<outbox>/g<N>/`;
//!    with `emit_topics`, produced to the aligned and QC topics.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ndarray::{concatenate, Array2, Axis};
use serde::Serialize;

use crate::config::Config;
use crate::io::dataset::{LoadSpec, ProfileTable};
use crate::io::profile::NonFinitePolicy;
use crate::io::table;
use crate::method::fit::{correct as fit, Dataset, NoProgress};
use crate::method::model::{Model, PlateRecord};
use crate::serve::generations::{self, GenerationDrift};
use crate::serve::plate::{self, DecodedPlate};
use crate::serve::state::snapshot::{self, sync_dir, write_synced};
use crate::serve::state::{self as state_mod, wal, StateDir};

/// Which published plates the new generation is fitted on.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Window {
    /// Every plate the live generation published.
    All,
    /// The last N plates published.
    Last(usize),
    /// These plate ids.
    Plates(Vec<String>),
    /// Every published plate of these batches.
    Batches(Vec<String>),
}

/// What `balans realign` is asked to do.
#[derive(Debug, Clone)]
pub struct RealignOptions {
    /// The plates to refit on.
    pub window: Window,
    /// Files or directories holding the plates' raw profiles (plate files
    /// as the daemon takes them).
    pub sources: Vec<PathBuf>,
    /// Read the plates again from `[kafka] plates_topic` instead (Kafka
    /// mode; `sources` is then ignored).
    pub from_topic: bool,
    /// Fit the reference table (`[serve] reference`) too.
    pub with_reference: bool,
    /// Write the refitted plates' new outputs to `<outbox>/g<N>/`.
    pub emit: Option<PathBuf>,
    /// Produce the refitted plates' new outputs to `[kafka] aligned_topic`
    /// and `qc_topic` (Kafka mode).
    pub emit_topics: bool,
}

/// One refitted plate: its new output against the live publication.
#[derive(Debug, Clone, Serialize)]
pub struct RefittedPlate {
    /// Plate id.
    pub plate: String,
    /// Batch.
    pub batch: String,
    /// Rows.
    pub rows: usize,
    /// Where its raw profiles were read.
    pub source: String,
    /// Drift between the two generations' outputs.
    pub drift: Option<GenerationDrift>,
}

/// What `balans realign` did (`STATE/next/realign.json`).
#[derive(Debug, Clone, Serialize)]
pub struct RealignRecord {
    /// The new generation.
    pub generation: u64,
    /// Its model version after the refit.
    pub version: String,
    /// The live generation's version when it was read.
    pub live_version: String,
    /// Plates the live generation had published when it was read.
    pub live_plates: usize,
    /// The window.
    pub window: Window,
    /// The reference table fitted with them (`None`: none).
    pub reference: Option<PathBuf>,
    /// Reference rows fitted.
    pub reference_rows: usize,
    /// Rows of the new generation.
    pub rows: usize,
    /// Refitted plates, in publication order.
    pub plates: Vec<RefittedPlate>,
    /// Seconds since the Unix epoch.
    pub created: u64,
}

/// Read the live generation without changing anything: a torn last record
/// is left alone (a running daemon may be appending it). Retried a few
/// times when a concurrent snapshot swap moves files under the reader.
pub fn read_live(state_dir: &Path) -> Result<Model> {
    let mut last = None;
    for attempt in 0..3 {
        match read_live_once(state_dir) {
            Ok(m) => return Ok(m),
            Err(e) => {
                tracing::warn!(attempt, error = %format!("{e:#}"), "cannot read the live state (retrying)");
                last = Some(e);
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("cannot read the live state")))
}

fn read_live_once(state_dir: &Path) -> Result<Model> {
    let Some(snap) = state_mod::locate_snapshot(state_dir)? else {
        bail!(
            "{} holds no model: nothing has been published to realign on",
            state_dir.display()
        );
    };
    let mut model = snapshot::read(&snap, state_mod::requires_manifest(state_dir))?;
    let path = state_dir.join("wal.log");
    let bytes = state_mod::read_log(&path)?;
    let scan = wal::scan(&bytes);
    if let Some(wal::Damage::Corrupt { offset, reason, .. }) = &scan.damage {
        bail!(
            "{}: damaged record at byte offset {offset} ({reason}); see `balans state check --state-dir {}`",
            path.display(),
            state_dir.display()
        );
    }
    state_mod::replay(&mut model, &scan.records).map_err(|e| {
        anyhow::anyhow!(
            "{}: record at byte offset {}: {}",
            path.display(),
            e.offset,
            e.message
        )
    })?;
    Ok(model)
}

/// The published plates in the window, in publication order.
pub fn choose(model: &Model, window: &Window) -> Result<Vec<(String, PlateRecord)>> {
    let mut all: Vec<(String, PlateRecord)> = model
        .meta()
        .plates
        .iter()
        .map(|(k, r)| (k.clone(), r.clone()))
        .collect();
    all.sort_by_key(|(_, r)| r.first_row);
    Ok(match window {
        Window::All => all,
        Window::Last(n) => {
            let skip = all.len().saturating_sub(*n);
            all.split_off(skip)
        }
        Window::Plates(ids) => {
            let unknown: Vec<&String> = ids
                .iter()
                .filter(|id| !model.meta().plates.contains_key(*id))
                .collect();
            if !unknown.is_empty() {
                bail!(
                    "{} of the chosen plates were not published by the live generation (first: {})",
                    unknown.len(),
                    unknown[0]
                );
            }
            let want: BTreeSet<&String> = ids.iter().collect();
            all.into_iter().filter(|(k, _)| want.contains(k)).collect()
        }
        Window::Batches(bs) => {
            let unknown: Vec<&String> = bs
                .iter()
                .filter(|b| !all.iter().any(|(_, r)| &r.batch == *b))
                .collect();
            if !unknown.is_empty() {
                bail!(
                    "no published plate of batch {} (batches with published plates: {})",
                    unknown[0],
                    all.iter()
                        .map(|(_, r)| r.batch.as_str())
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            all.into_iter()
                .filter(|(_, r)| bs.contains(&r.batch))
                .collect()
        }
    })
}

/// Plate files under `sources` (files, or directories listed one level
/// deep, in name order): table extensions only, no dot-files.
fn plate_files(sources: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for s in sources {
        if s.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(s)
                .with_context(|| format!("cannot list {}", s.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && !p
                            .file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                        && table::Format::from_path(p).is_ok()
                })
                .collect();
            v.sort();
            out.extend(v);
        } else if s.is_file() {
            out.push(s.clone());
        } else {
            bail!("{}: no such file or directory", s.display());
        }
    }
    Ok(out)
}

/// The chosen plates' raw profiles as they are found: kept only with the
/// content the live generation recorded.
struct Finder<'a> {
    want: BTreeMap<&'a str, &'a PlateRecord>,
    found: BTreeMap<String, (DecodedPlate, String)>,
    other_content: BTreeSet<String>,
}

impl<'a> Finder<'a> {
    fn new(chosen: &'a [(String, PlateRecord)]) -> Finder<'a> {
        Finder {
            want: chosen.iter().map(|(k, r)| (k.as_str(), r)).collect(),
            found: BTreeMap::new(),
            other_content: BTreeSet::new(),
        }
    }

    fn complete(&self) -> bool {
        self.found.len() == self.want.len()
    }

    /// Keep `d` if it is a chosen plate with the published content.
    fn consider(&mut self, d: DecodedPlate, source: String) {
        let Some(rec) = self.want.get(d.plate.as_str()) else {
            return;
        };
        if self.found.contains_key(&d.plate) {
            return;
        }
        if rec.content_hash != d.hash && rec.content_hash != d.legacy_hash {
            tracing::warn!(source = %source, plate = %d.plate, "content differs from what the live generation published: skipped");
            self.other_content.insert(d.plate.clone());
            return;
        }
        self.found.insert(d.plate.clone(), (d, source));
    }

    /// Every chosen plate, or an error naming the first missing one.
    fn finish(
        self,
        chosen: &[(String, PlateRecord)],
        places: &str,
    ) -> Result<BTreeMap<String, (DecodedPlate, String)>> {
        let missing: Vec<&str> = chosen
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| !self.found.contains_key(*k))
            .collect();
        if !missing.is_empty() {
            bail!(
                "the raw profiles of {} chosen plate(s) are not in {places} (first: {}{}); \
                 give the files with --plates-from, or narrow the window",
                missing.len(),
                missing[0],
                if self.other_content.contains(missing[0]) {
                    ", found with other content than was published"
                } else {
                    ""
                }
            );
        }
        Ok(self.found)
    }
}

/// Find and decode the chosen plates' raw profiles in files; every one
/// must be found with the content the live generation recorded.
fn find_plates(
    cfg: &Config,
    chosen: &[(String, PlateRecord)],
    sources: &[PathBuf],
) -> Result<BTreeMap<String, (DecodedPlate, String)>> {
    let mut finder = Finder::new(chosen);
    for path in plate_files(sources)? {
        if finder.complete() {
            break;
        }
        let source = path.display().to_string();
        let decoded = std::fs::read(&path)
            .with_context(|| format!("cannot read {source}"))
            .and_then(|bytes| {
                let t = table::Format::from_path(&path)
                    .and_then(|f| table::decode_table(&bytes, f))
                    .with_context(|| format!("cannot read table {source}"))?;
                plate::decode(
                    t,
                    &bytes,
                    &crate::io::files::plate_id_of(&path),
                    &cfg.correct,
                    &source,
                )
                .map_err(|r| anyhow::anyhow!("{r}"))
            });
        match decoded {
            Ok(d) => finder.consider(d, source),
            Err(e) => {
                tracing::warn!(file = %source, error = %format!("{e:#}"), "not a plate: skipped")
            }
        }
    }
    let places = sources
        .iter()
        .map(|s| s.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    finder.finish(chosen, &places)
}

/// Find the chosen plates by reading `[kafka] plates_topic` again.
#[cfg(feature = "kafka")]
fn find_plates_in_topic(
    cfg: &Config,
    chosen: &[(String, PlateRecord)],
) -> Result<BTreeMap<String, (DecodedPlate, String)>> {
    let mut finder = Finder::new(chosen);
    let read = crate::serve::kafka::reread::read_plates(
        cfg,
        std::time::Duration::from_secs(30),
        &mut |d, source| {
            finder.consider(d, source);
            finder.complete()
        },
    )?;
    tracing::info!(plates = read, topic = %cfg.kafka.plates_topic, "plates topic read again");
    finder.finish(chosen, &format!("topic {}", cfg.kafka.plates_topic))
}

#[cfg(not(feature = "kafka"))]
fn find_plates_in_topic(
    _cfg: &Config,
    _chosen: &[(String, PlateRecord)],
) -> Result<BTreeMap<String, (DecodedPlate, String)>> {
    bail!("balans was built without Kafka support: give the plates' files with --plates-from")
}

/// Build the new generation and install it as `STATE/next/`; returns what
/// was done (also written to `STATE/next/realign.json`).
pub fn realign(cfg: &Config, opts: &RealignOptions) -> Result<RealignRecord> {
    let state_dir = &cfg.serve.state_dir;
    anyhow::ensure!(
        !state_dir.join("PROMOTING").exists(),
        "{}: a promotion is in progress; start the daemon to finish it, then realign",
        state_dir.display()
    );
    if generations::has_next(state_dir) {
        let v = generations::open_next(state_dir)
            .ok()
            .flatten()
            .map(|n| n.model.version())
            .unwrap_or_default();
        bail!(
            "{} already holds a new generation ({v}) under evaluation: promote it (`balans realign --promote`) \
             or, with the daemon stopped, remove {} to discard it",
            state_dir.display(),
            generations::next_dir(state_dir).display()
        );
    }
    let live = read_live(state_dir)?;
    let chosen = choose(&live, &opts.window)?;
    let reference = if opts.with_reference {
        cfg.serve.reference.clone()
    } else {
        None
    };
    anyhow::ensure!(
        !chosen.is_empty() || reference.is_some(),
        "nothing to fit: the window holds no published plate and no reference table is used"
    );
    tracing::info!(
        live = %live.version(),
        plates = chosen.len(),
        reference = ?reference,
        "realign: fitting a new generation"
    );
    let plates = if opts.from_topic {
        find_plates_in_topic(cfg, &chosen)?
    } else {
        find_plates(cfg, &chosen, &opts.sources)?
    };
    let features = live.meta().features.clone();

    // The fit's rows: the reference table's, then each plate's, in
    // publication order (the order the new generation's rows keep).
    let mut xs: Vec<Array2<f64>> = Vec::new();
    let mut batch: Vec<String> = Vec::new();
    let mut plate_of: Vec<String> = Vec::new();
    let mut controls: Option<Vec<bool>> = Some(Vec::new());
    let mut reference_rows = 0;
    if let Some(path) = &reference {
        let spec = LoadSpec {
            non_finite: NonFinitePolicy::Error,
            label_col: None,
            ..LoadSpec::from_config(&cfg.correct)?
        };
        let t = ProfileTable::load(path, &spec)?;
        let pos = live
            .feature_positions(&t.columns.names)
            .with_context(|| format!("reference table {}", path.display()))?;
        xs.push(t.x.select(Axis(1), &pos));
        reference_rows = t.rows();
        let plates_col = t.plate.clone();
        for i in 0..t.rows() {
            plate_of.push(match &plates_col {
                Some(p) => format!("reference:{}", p[i]),
                None => format!("reference:{}", t.batch[i]),
            });
        }
        batch.extend(t.batch.iter().cloned());
        match (&mut controls, &t.controls) {
            (Some(c), Some(m)) => c.extend_from_slice(m),
            _ => controls = None,
        }
    }
    let mut records: Vec<(String, PlateRecord)> = Vec::new();
    let mut first_row = reference_rows as u64;
    for (id, rec) in &chosen {
        let (d, _) = plates
            .get(id)
            .with_context(|| format!("internal: plate {id} not found"))?;
        let pos = live
            .feature_positions(&d.columns.names)
            .with_context(|| format!("plate {id}"))?;
        xs.push(d.x.select(Axis(1), &pos));
        let n = d.x.nrows();
        batch.extend(std::iter::repeat_n(d.batch.clone(), n));
        plate_of.extend(std::iter::repeat_n(id.clone(), n));
        match (&mut controls, &d.controls) {
            (Some(c), Some(m)) => c.extend_from_slice(m),
            _ => controls = None,
        }
        records.push((
            id.clone(),
            PlateRecord {
                batch: d.batch.clone(),
                first_row,
                rows: n as u64,
                content_hash: rec.content_hash,
                version: String::new(), // set below, once the generation is known
                qc: None,
                pooled_controls: 0,
            },
        ));
        first_row += n as u64;
    }
    let views: Vec<_> = xs.iter().map(|x| x.view()).collect();
    let x = concatenate(Axis(0), &views).context("cannot stack the plates' profiles")?;
    let data = Dataset {
        x: x.view(),
        batch: &batch,
        plate: Some(&plate_of),
        controls: controls.as_deref(),
    };
    let f = fit(&data, &cfg.method, &NoProgress).context("the refit")?;
    let seeded = Model::from_fit(&f, features, &cfg.method)?;
    let generation = live.meta().generation + 1;
    let mut meta = seeded.meta().clone();
    meta.generation = generation;
    let refit_version = format!("g{generation}.p0");
    for (id, mut r) in records {
        r.version = refit_version.clone();
        meta.plates.insert(id, r);
    }
    let next = Model::restore(
        meta,
        seeded.rows_y().to_vec(),
        seeded.rows_batch().to_vec(),
        seeded.rows_coverage().to_vec(),
    )?;
    // A model that corrects in the feature space keeps the refit's profiles.
    let next = if next.meta().feature_rows {
        next.with_feature_rows(seeded.rows_w().to_vec())?
    } else {
        next
    };
    drop(seeded);

    // Each refitted plate under both generations.
    let mut refitted = Vec::new();
    let mut outputs = Vec::new();
    for (id, _) in &chosen {
        let (d, source) = &plates[id];
        let mine = plate::correct(&next, d, &cfg.qc).map_err(plate_error)?;
        let theirs = plate::correct(&live, d, &cfg.qc).map_err(plate_error)?;
        let drift = match generations::generation_drift(
            &theirs.values,
            &mine.values,
            d.controls.as_deref(),
            &theirs.qc.model_version,
            &mine.qc.model_version,
        ) {
            Ok(g) => Some(g),
            Err(e) => {
                tracing::warn!(plate = %id, error = %format!("{e:#}"), "no drift for this plate");
                None
            }
        };
        refitted.push(RefittedPlate {
            plate: id.clone(),
            batch: d.batch.clone(),
            rows: d.x.nrows(),
            source: source.clone(),
            drift: drift.clone(),
        });
        let mut mine = mine;
        mine.qc.generation_drift = drift;
        outputs.push((d, mine, source.as_str()));
    }
    let record = RealignRecord {
        generation,
        version: next.version(),
        live_version: live.version(),
        live_plates: live.meta().plates.len(),
        window: opts.window.clone(),
        reference,
        reference_rows,
        rows: next.len(),
        plates: refitted,
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    install(state_dir, &next, &record)?;
    if let Some(outbox) = &opts.emit {
        std::fs::create_dir_all(outbox)
            .with_context(|| format!("cannot create {}", outbox.display()))?;
        for (d, out, _) in &outputs {
            crate::serve::dir::write_generation_output(outbox, &d.plate, out)?;
        }
    }
    if opts.emit_topics {
        let v: Vec<(&DecodedPlate, &crate::serve::plate::Corrected, &str)> =
            outputs.iter().map(|(d, o, s)| (*d, o, *s)).collect();
        emit_to_topics(cfg, &v)?;
    }
    Ok(record)
}

#[cfg(feature = "kafka")]
fn emit_to_topics(
    cfg: &Config,
    outputs: &[(&DecodedPlate, &crate::serve::plate::Corrected, &str)],
) -> Result<()> {
    crate::serve::kafka::reread::emit(cfg, outputs)
}

#[cfg(not(feature = "kafka"))]
fn emit_to_topics(
    _cfg: &Config,
    _outputs: &[(&DecodedPlate, &crate::serve::plate::Corrected, &str)],
) -> Result<()> {
    bail!("balans was built without Kafka support: cannot produce to the topics")
}

fn plate_error(e: crate::serve::outcome::PlateError) -> anyhow::Error {
    match e {
        crate::serve::outcome::PlateError::Rejected(r) => anyhow::anyhow!("{r}"),
        crate::serve::outcome::PlateError::Fatal(e) => e,
    }
}

/// Write the new generation into `STATE/next.tmp/` and rename it to
/// `STATE/next/` (a stale `next.tmp/` from a killed realign is removed).
fn install(state_dir: &Path, model: &Model, record: &RealignRecord) -> Result<()> {
    let tmp = state_dir.join(generations::NEXT_TMP);
    if tmp.exists() {
        tracing::warn!(path = %tmp.display(), "removing an unfinished realignment");
        std::fs::remove_dir_all(&tmp)
            .with_context(|| format!("cannot remove {}", tmp.display()))?;
    }
    let mut st = StateDir::open(&tmp)?;
    st.snapshot(model)?;
    drop(st);
    write_synced(
        &tmp.join(generations::REALIGN_RECORD),
        &serde_json::to_vec_pretty(record)?,
    )?;
    sync_dir(&tmp)?;
    std::fs::rename(&tmp, generations::next_dir(state_dir)).with_context(|| {
        format!(
            "cannot install the new generation as {}",
            generations::next_dir(state_dir).display()
        )
    })?;
    sync_dir(state_dir)
}
