//! End-to-end tests of the `balans` binary: formats, bad input, the bundled
//! BBBC021 run and `evaluate`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use balans::io::table::read_table;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_balans"))
}

fn run(args: &[&str]) -> Output {
    bin().arg("-q").args(args).output().expect("binary runs")
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "balans {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(args: &[&str]) -> String {
    let out = run(args);
    assert!(!out.status.success(), "balans {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn synth(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    ok(&[
        "synth",
        "--rows",
        "600",
        "--batches",
        "3",
        "--features",
        "12",
        "--output",
        s(&p),
    ]);
    p
}

fn bbbc021() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/bbbc021/bbbc021_wells_annotated.csv.gz")
}

#[test]
fn correct_keeps_every_column_and_row_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let input = synth(dir.path(), "in.csv");
    let original = read_table(&input).unwrap();
    for ext in ["parquet", "csv", "csv.gz", "arrow"] {
        let out = dir.path().join(format!("out.{ext}"));
        let summary = dir.path().join("summary.json");
        let text = ok(&[
            "correct",
            "--input",
            s(&input),
            "--output",
            s(&out),
            "--batch-col",
            "Metadata_Batch",
            "--control",
            "Metadata_Label=DMSO",
            "--label-col",
            "Metadata_Label",
            "--summary-json",
            s(&summary),
        ]);
        assert!(text.contains("batch mixing"), "{text}");
        let corrected = read_table(&out).unwrap();
        assert_eq!(corrected.num_rows(), original.num_rows());
        assert_eq!(
            corrected.schema().fields().len(),
            original.schema().fields().len()
        );
        for (i, f) in original.schema().fields().iter().enumerate() {
            assert_eq!(corrected.schema().field(i).name(), f.name());
            assert_eq!(corrected.schema().field(i).data_type(), f.data_type());
            if f.name().starts_with("Metadata_") {
                assert_eq!(
                    corrected.column(i).as_ref(),
                    original.column(i).as_ref(),
                    "{} changed",
                    f.name()
                );
            }
        }
        let feat = original.schema().index_of("Feature_000").unwrap();
        assert_ne!(
            corrected.column(feat).as_ref(),
            original.column(feat).as_ref(),
            "features corrected"
        );
        let j: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
        assert_eq!(j["fit"]["rows"], 600);
        // The default trust test is the mutual one, which uses no width.
        assert!(text.contains("trust test mutual"), "{text}");
        assert_eq!(j["fit"]["trust_rule"], "mutual");
        assert_eq!(j["fit"]["rounds"][0]["trust_width"], 0.0);
    }
}

#[test]
fn bad_input_is_refused_with_file_column_and_row() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.parquet");
    let csv = dir.path().join("bad.csv");
    std::fs::write(
        &csv,
        "Metadata_Batch,Metadata_Plate,F1,F2,F3\nA,p1,1,2,5\nA,p1,2,nan,5\nB,p2,3,4,5\nB,p2,4,5,5\nA,p1,1.5,2,5\nB,p2,2.5,3,5\n",
    )
    .unwrap();
    // Missing batch column: names the column and the file; nothing written.
    let e = fails(&[
        "correct",
        "--input",
        s(&csv),
        "--output",
        s(&out),
        "--batch-col",
        "Metadata_Week",
    ]);
    assert!(e.contains("Metadata_Week") && e.contains("bad.csv"), "{e}");
    assert!(!out.exists());
    // NaN feature: names column and data row.
    let e = fails(&[
        "correct",
        "--input",
        s(&csv),
        "--output",
        s(&out),
        "--batch-col",
        "Metadata_Batch",
    ]);
    assert!(e.contains("F2") && e.contains("data row 2"), "{e}");
    assert!(!out.exists());
    // Policies make it pass; the constant feature F3 comes back unchanged.
    ok(&[
        "correct",
        "--input",
        s(&csv),
        "--output",
        s(&out),
        "--batch-col",
        "Metadata_Batch",
        "--impute",
        "--k",
        "2",
        "--m",
        "2",
    ]);
    let t = read_table(&out).unwrap();
    assert_eq!(t.num_rows(), 6);
    let f3 = t.column(t.schema().index_of("F3").unwrap());
    assert!(f3
        .as_any()
        .downcast_ref::<arrow_array::Int64Array>()
        .unwrap()
        .iter()
        .all(|v| v == Some(5)));
    ok(&[
        "correct",
        "--input",
        s(&csv),
        "--output",
        s(&out),
        "--batch-col",
        "Metadata_Batch",
        "--drop-features",
    ]);
    assert!(read_table(&out).unwrap().schema().index_of("F2").is_err());
    // No features, empty table, unreadable file, unknown extension, bad selector.
    let nofeat = dir.path().join("nofeat.csv");
    std::fs::write(&nofeat, "Metadata_Batch,Metadata_X\nA,x\nB,y\n").unwrap();
    assert!(fails(&[
        "correct",
        "-i",
        s(&nofeat),
        "-o",
        s(&out),
        "--batch-col",
        "Metadata_Batch"
    ])
    .contains("no feature columns"));
    let empty = dir.path().join("empty.csv");
    std::fs::write(&empty, "Metadata_Batch,F1\n").unwrap();
    assert!(fails(&[
        "correct",
        "-i",
        s(&empty),
        "-o",
        s(&out),
        "--batch-col",
        "Metadata_Batch"
    ])
    .contains("no rows"));
    let missing = dir.path().join("missing.parquet");
    assert!(fails(&[
        "correct",
        "-i",
        s(&missing),
        "-o",
        s(&out),
        "--batch-col",
        "B"
    ])
    .contains("missing.parquet"));
    let garbage = dir.path().join("garbage.parquet");
    std::fs::write(&garbage, b"not a parquet file").unwrap();
    assert!(fails(&[
        "correct",
        "-i",
        s(&garbage),
        "-o",
        s(&out),
        "--batch-col",
        "B"
    ])
    .contains("garbage.parquet"));
    assert!(fails(&[
        "correct",
        "-i",
        s(&csv),
        "-o",
        "x.txt",
        "--batch-col",
        "Metadata_Batch",
        "--impute"
    ])
    .contains("x.txt"));
    let e = fails(&[
        "correct",
        "-i",
        s(&csv),
        "-o",
        s(&out),
        "--batch-col",
        "Metadata_Batch",
        "--impute",
        "--control",
        "Metadata_Batch=Z",
    ]);
    assert!(e.contains("Metadata_Batch=Z"), "{e}");
}

#[test]
fn config_file_and_environment_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    let input = synth(dir.path(), "in.parquet");
    let cfg = dir.path().join("b.toml");
    std::fs::write(
        &cfg,
        "[method]\nrounds = 1\n[correct]\nbatch_col = \"Metadata_Batch\"\n",
    )
    .unwrap();
    let out = dir.path().join("o.parquet");
    let summary = dir.path().join("s.json");
    let o = bin()
        .args([
            "-q",
            "correct",
            "-i",
            s(&input),
            "-o",
            s(&out),
            "--config",
            s(&cfg),
            "--summary-json",
            s(&summary),
        ])
        .env("BALANS_METHOD__ROUNDS", "2")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert_eq!(
        j["fit"]["rounds"].as_array().unwrap().len(),
        2,
        "environment overrides the file"
    );
    let e = fails(&[
        "correct",
        "-i",
        s(&input),
        "-o",
        s(&out),
        "--batch-col",
        "Metadata_Batch",
        "--budget",
        "3",
    ]);
    assert!(e.contains("budget"), "{e}");
}

/// Errors in what the table is read with name the flag and the config key;
/// `evaluate` reads its tables with the same loader and messages.
#[test]
fn loader_errors_name_flag_key_file_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let input = synth(dir.path(), "in.parquet");
    let out = dir.path().join("o.parquet");
    let correct = |extra: &[&str]| {
        let mut a = vec![
            "correct",
            "-i",
            s(&input),
            "-o",
            s(&out),
            "--batch-col",
            "Metadata_Batch",
        ];
        a.extend_from_slice(extra);
        fails(&a)
    };
    let e = correct(&["--exclude", "("]);
    assert!(
        e.contains("--exclude")
            && e.contains("[correct] exclude")
            && e.contains("regular expression"),
        "{e}"
    );
    let e = correct(&["--control", "DMSO"]);
    assert!(
        e.contains("--control") && e.contains("[correct] control") && e.contains("COLUMN=VALUE"),
        "{e}"
    );
    let e = correct(&["--label-col", "Metadata_MoA"]);
    assert!(
        e.contains("in.parquet") && e.contains("Metadata_MoA"),
        "{e}"
    );
    assert!(
        !out.exists(),
        "nothing written when the label column is missing"
    );
    let e = fails(&["correct", "-i", s(&input), "-o", s(&out)]);
    assert!(
        e.contains("--batch-col") && e.contains("BALANS_CORRECT__BATCH_COL"),
        "{e}"
    );
    // evaluate: a selector that matches nothing, a baseline lacking a feature.
    let e = fails(&[
        "evaluate",
        "-i",
        s(&input),
        "--batch-col",
        "Metadata_Batch",
        "--label-col",
        "Metadata_Label",
        "--control",
        "Metadata_Label=dmso",
    ]);
    assert!(
        e.contains("in.parquet") && e.contains("Metadata_Label=dmso"),
        "{e}"
    );
    let fewer = dir.path().join("fewer.parquet");
    ok(&[
        "synth",
        "--rows",
        "600",
        "--batches",
        "3",
        "--features",
        "11",
        "--output",
        s(&fewer),
    ]);
    let e = fails(&[
        "evaluate",
        "-i",
        s(&input),
        "--baseline",
        s(&fewer),
        "--batch-col",
        "Metadata_Batch",
        "--label-col",
        "Metadata_Label",
    ]);
    assert!(
        e.contains("fewer.parquet") && e.contains("Feature_011"),
        "{e}"
    );
}

/// The README's main job: BBBC021 weeks mix better while MoA structure holds.
#[test]
fn bbbc021_weeks_mix_better_and_moa_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bbbc021.parquet");
    let data = bbbc021();
    ok(&[
        "correct",
        "-i",
        s(&data),
        "-o",
        s(&out),
        "--batch-col",
        "Metadata_Week",
        "--control",
        "Metadata_MoA=DMSO",
        "--exclude",
        "_Location_|_Center_",
        "--label-col",
        "Metadata_MoA",
    ]);
    // One call scores the corrected table and (as "before") the baseline,
    // and writes every report format.
    let j = dir.path().join("r.json");
    let html = dir.path().join("r.html");
    let md = dir.path().join("r.md");
    let text = ok(&[
        "evaluate",
        "-i",
        s(&out),
        "--baseline",
        s(&data),
        "--batch-col",
        "Metadata_Week",
        "--label-col",
        "Metadata_MoA",
        "--control",
        "Metadata_MoA=DMSO",
        "--exclude",
        "_Location_|_Center_",
        "--json",
        s(&j),
        "--html",
        s(&html),
        "--markdown",
        s(&md),
    ]);
    assert!(text.contains("before") && text.contains("after"), "{text}");
    let after: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&j).unwrap()).unwrap();
    let before = after["before"].clone();
    assert!(before.is_object(), "no baseline scores in {after}");
    // The baseline against itself: PCR comparison 0 by definition.
    assert_eq!(before["pcr_comparison"].as_f64(), Some(0.0));
    let page = std::fs::read_to_string(&html).unwrap();
    // 4 scatters (batch/label x before/after) + the metric bars.
    assert_eq!(
        page.matches("<svg").count(),
        5,
        "figures in the HTML report"
    );
    for caption in [
        "before: PCA coloured by batch",
        "after: PCA coloured by label",
        "metrics before and after",
        "Week10",
    ] {
        assert!(page.contains(caption), "missing {caption}");
    }
    let mdt = std::fs::read_to_string(&md).unwrap();
    assert!(
        mdt.contains("| section | metric | before | after |"),
        "{mdt}"
    );
    for fig in ["pca_batch_before", "pca_label_after", "metrics"] {
        let svg = dir.path().join(format!("r.{fig}.svg"));
        assert!(mdt.contains(&format!("(r.{fig}.svg)")), "{mdt}");
        assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));
    }
    let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    assert!(
        f(&after, "batch") > f(&before, "batch") + 0.1,
        "batch {} -> {}",
        f(&before, "batch"),
        f(&after, "batch")
    );
    assert!(f(&after, "kbet") > f(&before, "kbet"));
    assert!(
        f(&after, "bio") > f(&before, "bio") - 0.03,
        "bio {} -> {}",
        f(&before, "bio"),
        f(&after, "bio")
    );
    assert!(f(&after, "total") > f(&before, "total"));
}

#[test]
fn evaluate_reports_every_aggregate_and_drift_is_zero_for_identical_tables() {
    let dir = tempfile::tempdir().unwrap();
    let input = synth(dir.path(), "in.parquet");
    let j = dir.path().join("r.json");
    let text = ok(&[
        "evaluate",
        "-i",
        s(&input),
        "--batch-col",
        "Metadata_Batch",
        "--label-col",
        "Metadata_Label",
        "--control",
        "Metadata_Label=DMSO",
        "--json",
        s(&j),
    ]);
    assert!(text.contains("total"));
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&j).unwrap()).unwrap();
    for k in ["batch", "bio", "total", "ilisi", "kbet", "nmi", "ari"] {
        assert!(r[k].is_number(), "{k} missing in {r}");
    }
    let text = ok(&[
        "evaluate",
        "drift",
        "--before",
        s(&input),
        "--after",
        s(&input),
        "--control",
        "Metadata_Label=DMSO",
        "--batch-col",
        "Metadata_Batch",
    ]);
    assert!(
        text.contains("drift (median cosine displacement, gauge-fixed on controls): 0.000000"),
        "{text}"
    );
    let e = fails(&["evaluate", "-i", s(&input), "--batch-col", "Metadata_Nope"]);
    assert!(e.contains("Metadata_Nope"), "{e}");
}

/// The arguments of the README's first command (`cargo run -- correct ...`
/// under "# 1."), split as a POSIX shell would for the quoting it uses.
fn readme_first_command() -> Vec<String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let line = readme
        .lines()
        .skip_while(|l| !l.starts_with("# 1."))
        .find(|l| l.starts_with("cargo run"))
        .expect("README: a `cargo run` line after `# 1.`");
    let rest = line
        .split_once(" -- ")
        .map(|(_, r)| r)
        .expect("README: `cargo run -- ARGS`");
    let (mut words, mut cur, mut quoted, mut any) = (Vec::new(), String::new(), false, false);
    for c in rest.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                any = true;
            }
            ' ' if !quoted => {
                if any {
                    words.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(cur);
    }
    words
}

/// Issue 15, case 0: the README's first command, run from a fresh checkout
/// (no `out/` directory), succeeds and writes its output.
#[test]
fn readme_first_command_runs_in_a_fresh_checkout() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data/bbbc021");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::copy(bbbc021(), data.join("bbbc021_wells_annotated.csv.gz")).unwrap();
    let args = readme_first_command();
    assert_eq!(
        args.first().map(String::as_str),
        Some("correct"),
        "{args:?}"
    );
    let out = bin().args(&args).current_dir(dir.path()).output().unwrap();
    assert!(
        out.status.success(),
        "README command failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let i = args.iter().position(|a| a == "--output").unwrap();
    let t = read_table(&dir.path().join(&args[i + 1])).unwrap();
    assert_eq!(t.num_rows(), 632);
}

/// Outputs are checked before the fit: a missing directory is created, a
/// directory or the input itself (also through a hard link) is refused
/// with a message naming the path, and the input is left untouched.
#[test]
fn outputs_are_checked_before_the_fit() {
    let dir = tempfile::tempdir().unwrap();
    let input = synth(dir.path(), "in.csv");
    let before = std::fs::read(&input).unwrap();
    let base = [
        "correct",
        "--batch-col",
        "Metadata_Batch",
        "--input",
        s(&input),
    ];
    let deep = dir.path().join("a/b/out.parquet");
    ok(&[&base[..], &["--output", s(&deep)]].concat());
    assert!(deep.exists());
    let e = fails(&[&base[..], &["--output", s(&input)]].concat());
    assert!(e.contains("it is the input"), "{e}");
    let link = dir.path().join("link.csv");
    std::fs::hard_link(&input, &link).unwrap();
    let e = fails(&[&base[..], &["--output", s(&link)]].concat());
    assert!(e.contains("it is the input"), "{e}");
    let d = dir.path().join("adir.parquet");
    std::fs::create_dir(&d).unwrap();
    let e = fails(&[&base[..], &["--output", s(&d)]].concat());
    assert!(e.contains("is a directory"), "{e}");
    assert_eq!(std::fs::read(&input).unwrap(), before);
}

// ------------------------------------------------ issue 15: damaged tables

/// `t` plus (or with, if present) column `name` = `col`.
fn set_column(
    t: &arrow_array::RecordBatch,
    name: &str,
    col: arrow_array::ArrayRef,
) -> arrow_array::RecordBatch {
    use arrow_schema::{Field, Schema};
    let mut fields: Vec<Field> = t.schema().fields().iter().map(|f| (**f).clone()).collect();
    let mut cols = t.columns().to_vec();
    let field = Field::new(name, col.data_type().clone(), true);
    match t.schema().index_of(name) {
        Ok(i) => {
            fields[i] = field;
            cols[i] = col;
        }
        Err(_) => {
            fields.push(field);
            cols.push(col);
        }
    }
    arrow_array::RecordBatch::try_new(std::sync::Arc::new(Schema::new(fields)), cols).unwrap()
}

fn feature(t: &arrow_array::RecordBatch, name: &str) -> Vec<f64> {
    t.column(t.schema().index_of(name).unwrap())
        .as_any()
        .downcast_ref::<arrow_array::Float64Array>()
        .unwrap()
        .values()
        .to_vec()
}

/// Case 4: a corrected value below 0 in a uint16 column is clamped to 0
/// (and counted in a warning), never written as a null.
#[test]
fn unsigned_features_are_saturated_not_nulled() {
    use arrow_array::Array;
    let dir = tempfile::tempdir().unwrap();
    let t = read_table(&synth(dir.path(), "in.parquet")).unwrap();
    // A count-like feature: small non-negative integers, zero in a third
    // of the rows, shifted by batch.
    let f0 = feature(&t, "Feature_000");
    let counts: Vec<u16> = f0
        .iter()
        .map(|x| (x * 3.0 + 2.0).round().max(0.0) as u16)
        .collect();
    let input = dir.path().join("u16.parquet");
    balans::io::table::write_table(
        &input,
        &set_column(
            &t,
            "Cells_Count",
            std::sync::Arc::new(arrow_array::UInt16Array::from(counts)),
        ),
    )
    .unwrap();
    let out = dir.path().join("out.parquet");
    let o = bin()
        .args([
            "correct",
            "-i",
            s(&input),
            "-o",
            s(&out),
            "--batch-col",
            "Metadata_Batch",
            "--control",
            "Metadata_Label=DMSO",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stderr = String::from_utf8_lossy(&o.stderr);
    let c = read_table(&out).unwrap();
    let col = c.column(c.schema().index_of("Cells_Count").unwrap());
    assert_eq!(col.data_type(), &arrow_schema::DataType::UInt16);
    assert_eq!(col.null_count(), 0, "no null where the input had a value");
    assert!(
        stderr.contains("clamped") && stderr.contains("Cells_Count"),
        "the clamping is reported: {stderr}"
    );
}

/// Cases 6, 7 and 8: a text cell in a feature column, an extreme value and
/// a duplicate column name are refused, naming file, column and row.
#[test]
fn damaged_feature_tables_are_refused_with_file_column_and_row() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.parquet");
    let args = |input: &Path| -> Vec<String> {
        [
            "correct",
            "-i",
            s(input),
            "-o",
            s(&out),
            "--batch-col",
            "Metadata_Batch",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let fails_on = |input: &Path, extra: &[&str]| -> String {
        let mut a = args(input);
        a.extend(extra.iter().map(|x| x.to_string()));
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let e = fails(&a);
        assert!(!out.exists(), "nothing written");
        e
    };
    // 6. one text cell among numbers: an error naming file, column, row.
    let csv = dir.path().join("text.csv");
    std::fs::write(
        &csv,
        "Metadata_Batch,Metadata_Plate,F1,F2,Note\nA,p1,1,2,x\nA,p1,2,3,y\nB,p2,3,n/a,z\n\
         B,p2,4,5,w\nA,p1,1.5,2,v\nB,p2,2.5,3,u\n",
    )
    .unwrap();
    let e = fails_on(&csv, &[]);
    assert!(
        e.contains("text.csv")
            && e.contains("'F2'")
            && e.contains("data row 3")
            && e.contains("n/a"),
        "{e}"
    );
    // A genuinely textual column still passes through.
    let fixed = dir.path().join("fixed.csv");
    std::fs::write(
        &fixed,
        std::fs::read_to_string(&csv).unwrap().replace("n/a", "4"),
    )
    .unwrap();
    let mut a = args(&fixed);
    a.extend(["--k", "2", "--m", "2"].iter().map(|x| x.to_string()));
    ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let t = read_table(&out).unwrap();
    assert_eq!(
        t.schema().field_with_name("Note").unwrap().data_type(),
        &arrow_schema::DataType::Utf8
    );
    std::fs::remove_file(&out).unwrap();
    // 7. an extreme value: refused above max_abs_value (default 1e12);
    // raising the bound lets it through.
    let huge = dir.path().join("huge.csv");
    std::fs::write(
        &huge,
        std::fs::read_to_string(&fixed)
            .unwrap()
            .replace("B,p2,4,5,w", "B,p2,4,1e300,w"),
    )
    .unwrap();
    let e = fails_on(&huge, &[]);
    assert!(
        e.contains("huge.csv")
            && e.contains("'F2'")
            && e.contains("data row 4")
            && e.contains("max_abs_value")
            && e.contains("--max-abs-value"),
        "{e}"
    );
    let e = fails_on(&fixed, &["--max-abs-value", "3"]);
    assert!(e.contains("'F1'") && e.contains("data row 4"), "{e}");
    let mut a = args(&huge);
    a.extend(
        ["--k", "2", "--m", "2", "--max-abs-value", "inf"]
            .iter()
            .map(|x| x.to_string()),
    );
    ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
    std::fs::remove_file(&out).unwrap();
    // 8. a duplicate column name in Parquet and Arrow: refused, named.
    let t = read_table(&synth(dir.path(), "syn.parquet")).unwrap();
    let j = t.schema().index_of("Feature_004").unwrap();
    let mut fields: Vec<arrow_schema::Field> =
        t.schema().fields().iter().map(|f| (**f).clone()).collect();
    let mut cols = t.columns().to_vec();
    fields.push(fields[j].clone());
    cols.push(cols[j].clone());
    let dup = arrow_array::RecordBatch::try_new(
        std::sync::Arc::new(arrow_schema::Schema::new(fields)),
        cols,
    )
    .unwrap();
    for name in ["dup.parquet", "dup.arrow"] {
        let p = dir.path().join(name);
        balans::io::table::write_table(&p, &dup).unwrap();
        let e = fails_on(&p, &[]);
        assert!(
            e.contains(name) && e.contains("'Feature_004'") && e.contains("more than once"),
            "{e}"
        );
    }
}
