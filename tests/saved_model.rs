//! Saved models through the library API: save, load (and refuse damage),
//! apply to held-out plates inductively. The CLI's `--save-model`, `apply`
//! and `serve --model` are tested in tests/cli.rs and tests/serve_dir.rs.

use std::path::Path;

use arrow_array::{RecordBatch, UInt32Array};
use balans::config::CorrectConfig;
use balans::io::dataset::{LoadSpec, ProfileTable};
use balans::method::params::Params;
use balans::serve::saved::{self, MODEL_FILE, SNAPSHOT_DIR};
use balans::synth::{generate, to_record_batch, SynthSpec};
use balans::{
    apply_model, correct, load_model, save_model, ApplyOptions, Config, Model, NoProgress,
    Provenance,
};

fn params() -> Params {
    Params {
        threads: 2,
        ..Params::default()
    }
}

fn spec() -> LoadSpec {
    LoadSpec::from_config(&CorrectConfig {
        batch_col: Some("Metadata_Batch".into()),
        control: Some("Metadata_Label=DMSO".into()),
        ..CorrectConfig::default()
    })
    .unwrap()
}

/// The synthetic table: 4 batches of 3 plates.
fn full() -> RecordBatch {
    let t = generate(&SynthSpec {
        rows: 2400,
        batches: 4,
        features: 20,
        plates_per_batch: 3,
        seed: 5,
        ..SynthSpec::default()
    })
    .unwrap();
    to_record_batch(&t).unwrap()
}

/// Rows of `t` whose plate satisfies `keep`.
fn rows(t: &RecordBatch, keep: impl Fn(&str, &str) -> bool) -> RecordBatch {
    let plate = balans::io::profile::text_column(t, "Metadata_Plate", "t").unwrap();
    let batch = balans::io::profile::text_column(t, "Metadata_Batch", "t").unwrap();
    let idx: Vec<u32> = (0..t.num_rows())
        .filter(|&i| keep(&plate[i], &batch[i]))
        .map(|i| i as u32)
        .collect();
    arrow_select::take::take_record_batch(t, &UInt32Array::from(idx)).unwrap()
}

fn load(t: RecordBatch, name: &str) -> ProfileTable {
    ProfileTable::from_table(t, &spec(), name).unwrap()
}

/// Reference: batches 1-3 without their last plate. Held out: those plates
/// (known batches) and batch 4 (a batch the model has never seen).
fn split() -> (ProfileTable, ProfileTable) {
    let t = full();
    let held = |p: &str, b: &str| b == "Batch04" || p.ends_with("_Plate03");
    let plates = balans::io::profile::text_column(&t, "Metadata_Plate", "t").unwrap();
    assert!(
        plates.iter().any(|p| held(p, "")),
        "plate names: {:?}",
        &plates[..3]
    );
    (
        load(rows(&t, |p, b| !held(p, b)), "reference.parquet"),
        load(rows(&t, held), "held.parquet"),
    )
}

fn fit_model(reference: &ProfileTable) -> Model {
    let fit = correct(&reference.dataset(), &params(), &NoProgress).unwrap();
    Model::from_fit(&fit, reference.columns.names.clone(), &params()).unwrap()
}

fn provenance() -> Provenance {
    let cfg = Config {
        method: params(),
        ..Config::default()
    };
    Provenance::from_config(&cfg).unwrap()
}

fn saved(dir: &Path, model: &Model) -> std::path::PathBuf {
    let d = dir.join("model");
    save_model(model, &d, &provenance()).unwrap();
    d
}

#[test]
fn a_saved_model_loads_identical_and_applies_like_the_original() {
    let (reference, held) = split();
    let mut model = fit_model(&reference);
    let dir = tempfile::tempdir().unwrap();
    let d = saved(dir.path(), &model);
    let mut loaded = load_model(&d).unwrap();
    assert_eq!(loaded.rows_y(), model.rows_y());
    assert_eq!(loaded.rows_batch(), model.rows_batch());
    assert_eq!(
        serde_json::to_string(loaded.meta()).unwrap(),
        serde_json::to_string(model.meta()).unwrap()
    );
    let (_, p) = saved::load_with_provenance(&d).unwrap();
    assert_eq!(p, provenance());
    // Saving over an existing model is refused.
    let err = save_model(&model, &d, &provenance()).unwrap_err();
    assert!(format!("{err:#}").contains("not empty"), "{err:#}");

    let opts = ApplyOptions::default();
    let a = apply_model(&mut model, &held, &opts).unwrap();
    let b = apply_model(&mut loaded, &held, &opts).unwrap();
    assert_eq!(a.corrected, b.corrected);
    assert_eq!(model.rows_y(), loaded.rows_y());
}

#[test]
fn apply_never_moves_model_rows_and_matches_plate_by_plate() {
    let (reference, held) = split();
    let mut model = fit_model(&reference);
    let before: Vec<f32> = model.rows_y().to_vec();
    let n0 = model.len();
    let plates_before = model.meta().plates.len();
    let opts = ApplyOptions::default();
    let applied = apply_model(&mut model, &held, &opts).unwrap();
    // Rows already in the model never move; the plates are incorporated.
    assert_eq!(&model.rows_y()[..before.len()], &before[..]);
    assert_eq!(model.len(), n0 + held.rows());
    let plate_ids: Vec<String> = {
        let mut seen = Vec::new();
        for p in held.plate.as_ref().unwrap() {
            if !seen.contains(p) {
                seen.push(p.clone());
            }
        }
        seen
    };
    assert_eq!(model.meta().plates.len(), plates_before + plate_ids.len());
    let order: Vec<&str> = applied.plates.iter().map(|r| r.plate.as_str()).collect();
    assert_eq!(
        order,
        plate_ids.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert!(applied
        .plates
        .iter()
        .all(|r| !r.replay && r.qc.is_some() && r.outlier.is_some()));
    // The batch the model had never seen was added.
    assert!(model.meta().batches.iter().any(|b| b == "Batch04"));
    assert_eq!(applied.corrected.dim(), held.x.dim());
    assert!(applied.corrected.iter().all(|v| v.is_finite()));
    assert_ne!(applied.corrected, held.x, "plates are corrected");

    // The same plates one table at a time, in the same order, on a fresh
    // model: the same values (later plates see earlier ones either way).
    let mut again = fit_model(&reference);
    let all = full();
    for id in &plate_ids {
        let one = load(rows(&all, |p, _| p == id), &format!("{id}.parquet"));
        let a = apply_model(&mut again, &one, &opts).unwrap();
        let idx: Vec<usize> = (0..held.rows())
            .filter(|&i| &held.plate.as_ref().unwrap()[i] == id)
            .collect();
        assert_eq!(
            a.corrected,
            applied.corrected.select(ndarray::Axis(0), &idx),
            "plate {id}"
        );
    }
    assert_eq!(again.rows_y(), model.rows_y());

    // Applying the same table again is a replay: same values, model unchanged.
    let n1 = model.len();
    let replay = apply_model(&mut model, &held, &opts).unwrap();
    assert_eq!(model.len(), n1);
    assert!(replay.plates.iter().all(|r| r.replay));
    let diff = (&replay.corrected - &applied.corrected)
        .iter()
        .fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(diff < 1e-9, "replayed values differ by {diff}");
}

#[test]
fn apply_refuses_a_table_lacking_a_model_feature_naming_it() {
    let (reference, held) = split();
    let mut model = fit_model(&reference);
    let dropped = held.columns.names[3].clone();
    let keep: Vec<usize> = (0..held.table.num_columns())
        .filter(|&j| held.table.schema().field(j).name() != &dropped)
        .collect();
    let t = held.table.project(&keep).unwrap();
    let n0 = model.len();
    let err = apply_model(
        &mut model,
        &load(t, "short.parquet"),
        &ApplyOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("short.parquet") && err.contains(&dropped),
        "{err}"
    );
    assert_eq!(model.len(), n0);
}

#[test]
fn load_refuses_damage_naming_the_file() {
    let (reference, _) = split();
    let model = fit_model(&reference);
    let dir = tempfile::tempdir().unwrap();
    let d = saved(dir.path(), &model);
    let copy = |name: &str| {
        let to = dir.path().join(name);
        std::fs::create_dir_all(to.join(SNAPSHOT_DIR)).unwrap();
        for e in std::fs::read_dir(d.join(SNAPSHOT_DIR)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(SNAPSHOT_DIR).join(e.file_name())).unwrap();
        }
        std::fs::copy(d.join(MODEL_FILE), to.join(MODEL_FILE)).unwrap();
        to
    };
    let err = |p: &Path| format!("{:#}", load_model(p).err().expect("refused"));

    // A flipped byte in the data.
    let flipped = copy("flipped");
    let y = flipped.join(SNAPSHOT_DIR).join("y.f32");
    let mut bytes = std::fs::read(&y).unwrap();
    bytes[17] ^= 0x40;
    std::fs::write(&y, bytes).unwrap();
    let e = err(&flipped);
    assert!(e.contains("y.f32") && e.contains("checksum"), "{e}");

    // A flipped byte in the manifest.
    let man = copy("manifest");
    let m = man.join(SNAPSHOT_DIR).join("manifest.json");
    let mut bytes = std::fs::read(&m).unwrap();
    let at = bytes.iter().position(|b| b.is_ascii_digit()).unwrap();
    bytes[at] = if bytes[at] == b'9' {
        b'8'
    } else {
        bytes[at] + 1
    };
    std::fs::write(&m, bytes).unwrap();
    let e = err(&man);
    assert!(e.contains("manifest.json") && e.contains("checksum"), "{e}");

    // A missing file.
    let missing = copy("missing");
    std::fs::remove_file(missing.join(SNAPSHOT_DIR).join("batch.u32")).unwrap();
    let e = err(&missing);
    assert!(e.contains("batch.u32"), "{e}");
    let no_desc = copy("nodesc");
    std::fs::remove_file(no_desc.join(MODEL_FILE)).unwrap();
    let e = err(&no_desc);
    assert!(
        e.contains(MODEL_FILE) && e.contains("not a saved model"),
        "{e}"
    );

    // A future format version, and another format.
    for (name, from, to, want) in [
        (
            "future",
            "\"version\": 1",
            "\"version\": 2",
            "newer than this build",
        ),
        (
            "other",
            "\"balans-model\"",
            "\"something-else\"",
            "not a saved balans model",
        ),
    ] {
        let p = copy(name);
        let text = std::fs::read_to_string(p.join(MODEL_FILE)).unwrap();
        assert!(text.contains(from), "{text}");
        std::fs::write(p.join(MODEL_FILE), text.replace(from, to)).unwrap();
        let e = err(&p);
        assert!(e.contains(MODEL_FILE) && e.contains(want), "{e}");
    }
    // The untouched copy still loads.
    assert!(load_model(&copy("intact")).is_ok());
}

#[test]
fn provenance_is_written_to_parquet_and_arrow_outputs() {
    use balans::io::table::{read_metadata, read_table, write_table_with_metadata};
    let t = full();
    let md = provenance().metadata();
    let dir = tempfile::tempdir().unwrap();
    for name in ["o.parquet", "o.arrow"] {
        let p = dir.path().join(name);
        write_table_with_metadata(&p, &t, &md).unwrap();
        let back = read_metadata(&p).unwrap();
        let got = Provenance::from_metadata(back.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        assert_eq!(got, Some(provenance()), "{name}");
        assert_eq!(read_table(&p).unwrap().num_rows(), t.num_rows());
    }
}
