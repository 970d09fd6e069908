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

// ------------------------------------------------------------- the CLI

mod common;
use common::{bin, data, drop_plate, s};

fn ok(args: &[&str]) -> String {
    let o = bin().arg("-q").args(args).output().unwrap();
    assert!(
        o.status.success(),
        "balans {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn fails(args: &[&str]) -> String {
    let o = bin().arg("-q").args(args).output().unwrap();
    assert!(!o.status.success(), "balans {args:?} should fail");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The `Feature_*` columns of a table file, by name.
fn features(p: &Path) -> Vec<(String, Vec<f64>)> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::Float64Type;
    let t = balans::io::table::read_table(p).unwrap();
    let schema = t.schema();
    let mut v: Vec<(String, Vec<f64>)> = schema
        .fields()
        .iter()
        .zip(t.columns())
        .filter(|(f, _)| f.name().starts_with("Feature_"))
        .map(|(f, c)| {
            (
                f.name().clone(),
                c.as_primitive::<Float64Type>().values().to_vec(),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn provenance_of(p: &Path) -> Provenance {
    let md = balans::io::table::read_metadata(p).unwrap();
    Provenance::from_metadata(md.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .unwrap_or_else(|| panic!("{}: no provenance in {md:?}", p.display()))
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn correct_save_model_then_apply_a_folder_equals_serve_model() {
    let st = data();
    let d = st.dir.path();
    let model = d.join("model");
    ok(&[
        "correct",
        "-i",
        s(&st.reference),
        "-o",
        s(&d.join("reference_corrected.parquet")),
        "--batch-col",
        "Metadata_Batch",
        "--control",
        "Metadata_Label=DMSO",
        "--threads",
        "2",
        "--save-model",
        s(&model),
    ]);
    let reference_rows = load_model(&model).unwrap().len();
    // The held-out plates, one file each, in a folder (and in the inbox).
    let plates = d.join("plates");
    let inbox = d.join("inbox");
    std::fs::create_dir_all(&plates).unwrap();
    std::fs::create_dir_all(&inbox).unwrap();
    for (p, t) in &st.plates {
        balans::io::table::write_table(&plates.join(format!("{p}.parquet")), t).unwrap();
        drop_plate(&inbox, &format!("{p}.parquet"), t);
    }
    // The layout comes from the saved model: no --batch-col needed.
    let applied = d.join("applied");
    let grown = d.join("grown");
    let out = ok(&[
        "apply",
        "--model",
        s(&model),
        "-i",
        s(&plates),
        "-o",
        s(&applied),
        "--save-model",
        s(&grown),
    ]);
    assert!(out.contains(&st.plates[0].0), "{out}");
    assert_eq!(
        names(&applied),
        names(&plates),
        "one output per input, same names"
    );
    let rows: usize = st.plates.iter().map(|(_, t)| t.num_rows()).sum();
    assert_eq!(load_model(&grown).unwrap().len(), reference_rows + rows);
    assert_eq!(
        load_model(&model).unwrap().len(),
        reference_rows,
        "the input model is not changed"
    );

    // The daemon warm-started from the same model publishes the same values.
    let outbox = d.join("outbox");
    ok(&[
        "serve",
        "--model",
        s(&model),
        "--state-dir",
        s(&d.join("state")),
        "--inbox",
        s(&inbox),
        "--outbox",
        s(&outbox),
        "--batch-col",
        "Metadata_Batch",
        "--control",
        "Metadata_Label=DMSO",
        "--poll-ms",
        "50",
        "--settle-ms",
        "0",
        "--once",
    ]);
    for (p, t) in &st.plates {
        let a = applied.join(format!("{p}.parquet"));
        let served = features(&outbox.join(format!("{p}.parquet")));
        assert_eq!(features(&a), served, "plate {p}");
        assert_ne!(
            features(&plates.join(format!("{p}.parquet"))),
            served,
            "plate {p} corrected"
        );
        assert_eq!(
            balans::io::table::read_table(&a).unwrap().num_rows(),
            t.num_rows()
        );
        let prov = provenance_of(&a);
        assert_eq!(prov.version, env!("CARGO_PKG_VERSION"));
        assert!(prov.config.contains("Metadata_Batch"), "{}", prov.config);
    }
}

#[test]
fn a_folder_is_one_dataset_and_bad_files_are_named() {
    let st = data();
    let d = st.dir.path();
    // The plates as files, and the same rows as one table in file order.
    let plates = d.join("plates");
    std::fs::create_dir_all(&plates).unwrap();
    let mut parts = Vec::new();
    for (p, t) in &st.plates {
        balans::io::table::write_table(&plates.join(format!("{p}.parquet")), t).unwrap();
        parts.push(t.clone());
    }
    let all = arrow_select::concat::concat_batches(&parts[0].schema(), &parts).unwrap();
    let one = d.join("one.parquet");
    balans::io::table::write_table(&one, &all).unwrap();
    let layout = [
        "--batch-col",
        "Metadata_Batch",
        "--control",
        "Metadata_Label=DMSO",
        "--threads",
        "2",
    ];
    let run = |input: &Path, output: &Path| {
        let mut a = vec!["correct", "-i", s(input), "-o", s(output)];
        a.extend(layout);
        ok(&a);
    };
    run(&one, &d.join("one_out.parquet"));
    let glob = plates.join("*.parquet");
    run(&glob, &d.join("many_out"));
    assert_eq!(names(&d.join("many_out")), names(&plates));
    let whole = features(&d.join("one_out.parquet"));
    let mut at = 0;
    for (p, t) in &st.plates {
        let f = features(&d.join("many_out").join(format!("{p}.parquet")));
        let n = t.num_rows();
        for ((name, v), (wname, w)) in f.iter().zip(&whole) {
            assert_eq!(name, wname);
            assert_eq!(&v[..], &w[at..at + n], "{p} {name}");
        }
        at += n;
    }

    // A damaged file, and a file lacking a feature column, are named.
    let bad = d.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    for (p, t) in st.plates.iter().take(2) {
        balans::io::table::write_table(&bad.join(format!("{p}.parquet")), t).unwrap();
    }
    std::fs::write(bad.join("zz_damaged.parquet"), b"not parquet").unwrap();
    let bad_out = d.join("bad_out");
    let mut a = vec!["correct", "-i", s(&bad), "-o", s(&bad_out)];
    a.extend(layout);
    let e = fails(&a);
    assert!(e.contains("zz_damaged.parquet"), "{e}");
    std::fs::remove_file(bad.join("zz_damaged.parquet")).unwrap();
    let t = &st.plates[2].1;
    let keep: Vec<usize> = (0..t.num_columns())
        .filter(|&j| t.schema().field(j).name() != "Feature_007")
        .collect();
    balans::io::table::write_table(&bad.join("zz_short.parquet"), &t.project(&keep).unwrap())
        .unwrap();
    let e = fails(&a);
    assert!(
        e.contains("zz_short.parquet") && e.contains("Feature_007"),
        "{e}"
    );

    // apply on a folder with a bad file names it too.
    let model = d.join("model");
    let ref_out = d.join("ref_out.parquet");
    let mut a = vec![
        "correct",
        "-i",
        s(&st.reference),
        "-o",
        s(&ref_out),
        "--save-model",
        s(&model),
    ];
    a.extend(layout);
    ok(&a);
    let e = fails(&[
        "apply",
        "--model",
        s(&model),
        "-i",
        s(&bad),
        "-o",
        s(&d.join("ap")),
    ]);
    assert!(
        e.contains("zz_short.parquet") && e.contains("Feature_007"),
        "{e}"
    );
    // --impute needs a single table.
    let x = d.join("x");
    let mut a = vec!["correct", "-i", s(&plates), "-o", s(&x), "--impute"];
    a.extend(layout);
    let e = fails(&a);
    assert!(e.contains("--impute"), "{e}");
}

#[test]
fn a_run_repeats_from_its_output_metadata_alone() {
    let st = data();
    let d = st.dir.path();
    let first = d.join("first.parquet");
    ok(&[
        "correct",
        "-i",
        s(&st.reference),
        "-o",
        s(&first),
        "--batch-col",
        "Metadata_Batch",
        "--control",
        "Metadata_Label=DMSO",
        "--exclude",
        "Feature_01",
        "--k",
        "9",
        "--seed",
        "7",
        "--rounds",
        "3",
        "--plate-rounds",
        "2",
        "--threads",
        "2",
    ]);
    let prov = provenance_of(&first);
    assert_eq!(prov.seed, 7);
    let cfg = prov.resolved_config().unwrap();
    assert_eq!(
        (cfg.method.k, cfg.method.rounds, cfg.method.plate_rounds),
        (9, 3, 2)
    );
    // Only the metadata: no flag but the input and output.
    let config = d.join("from_metadata.toml");
    std::fs::write(&config, &prov.config).unwrap();
    let second = d.join("second.parquet");
    ok(&[
        "correct",
        "-i",
        s(&st.reference),
        "-o",
        s(&second),
        "--config",
        s(&config),
    ]);
    assert_eq!(features(&first), features(&second));
    assert_eq!(provenance_of(&second), prov);
    // A different seed is a different run (the seed matters).
    let third = d.join("third.parquet");
    ok(&[
        "correct",
        "-i",
        s(&st.reference),
        "-o",
        s(&third),
        "--config",
        s(&config),
        "--seed",
        "8",
    ]);
    assert_ne!(features(&first), features(&third));
}

#[test]
fn serve_refuses_a_saved_model_and_a_reference_together() {
    let st = data();
    let d = st.dir.path();
    let o = bin()
        .args([
            "-q",
            "serve",
            "--reference",
            s(&st.reference),
            "--state-dir",
        ])
        .arg(d.join("state"))
        .arg("--inbox")
        .arg(d.join("inbox"))
        .arg("--outbox")
        .arg(d.join("outbox"))
        .args(["--batch-col", "Metadata_Batch", "--once"])
        .env("BALANS_SERVE__MODEL", d.join("model"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("both a saved model") && e.contains("reference"),
        "{e}"
    );
}

#[test]
fn a_plate_id_reused_with_other_content_is_refused() {
    let (reference, held) = split();
    let mut model = fit_model(&reference);
    let opts = ApplyOptions::default();
    apply_model(&mut model, &held, &opts).unwrap();
    let n = model.len();
    // The same plates with one value changed: the ids clash.
    let mut changed = held.clone();
    changed.x[(0, 0)] += 1.0;
    let t = changed.corrected_table(changed.x.view()).unwrap();
    let e = apply_model(&mut model, &load(t, "changed.parquet"), &opts)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("changed.parquet") && e.contains("duplicate plate id"),
        "{e}"
    );
    assert_eq!(model.len(), n);
}
