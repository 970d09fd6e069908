//! `balans serve` in the embedded directory mode: plates dropped in an inbox
//! are corrected and published once, bad plates are dead-lettered with a
//! reason, and a crash (kill -9) loses nothing.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use std::sync::Arc;

use arrow_array::{Array, ArrayRef, Float64Array, RecordBatch, StringArray};
use arrow_schema::{Field, Schema};
use balans::io::table::{read_table, write_table};

mod common;
use common::*;

/// `-q serve ...` in directory mode.
fn serve_args(st: &Data, state: &Path, inbox: &Path, outbox: &Path) -> Vec<String> {
    let mut v = vec!["-q".to_string()];
    v.extend(dir_args(st, state, inbox, outbox));
    v
}

fn outputs(outbox: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(outbox) else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".parquet"))
        .collect();
    v.sort();
    v
}

#[test]
fn plates_are_corrected_once_and_bad_plates_dead_lettered() {
    let st = data();
    let (state, inbox, outbox) = st.dirs();
    for (p, t) in &st.plates {
        drop_plate(&inbox, &format!("{p}.arrow"), t);
    }
    // Malformed inputs next to the good ones.
    std::fs::write(inbox.join("garbage.parquet"), b"not parquet").unwrap();
    let good = &st.plates[0].1;
    let no_batch = good
        .project(
            &(0..good.num_columns())
                .filter(|&i| good.schema().field(i).name() != "Metadata_Batch")
                .collect::<Vec<_>>(),
        )
        .unwrap();
    drop_plate(&inbox, "zz_nobatch.parquet", &no_batch);
    drop_plate(&inbox, "zz_empty.parquet", &good.slice(0, 0));
    let csv = inbox.join("zz_nan.csv");
    std::fs::write(
        &csv,
        "Metadata_Batch,Metadata_Plate,Feature_000\nBatch01,PX,1.0\nBatch01,PX,nan\n",
    )
    .unwrap();
    let mut args = serve_args(&st, &state, &inbox, &outbox);
    args.push("--once".into());
    let o = bin().args(&args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains(&format!("corrected {} plates", st.plates.len())),
        "{stdout}"
    );
    // Every plate published once, with QC, same rows and columns.
    let outs = outputs(&outbox);
    assert_eq!(outs.len(), st.plates.len(), "{outs:?}");
    for (p, t) in &st.plates {
        let out = read_table(&outbox.join(format!("{p}.parquet"))).unwrap();
        assert_eq!(out.num_rows(), t.num_rows());
        assert_eq!(out.schema(), t.schema());
        let qc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(outbox.join(format!("{p}.qc.json"))).unwrap())
                .unwrap();
        assert_eq!(qc["plate"], p.as_str());
        assert!(qc["model_version"].as_str().unwrap().starts_with('g'));
        assert!(inbox.join("done").join(format!("{p}.arrow")).exists());
    }
    // The unseen batch's plates were corrected towards the others.
    let qc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(outbox.join("Batch04_Plate01.qc.json")).unwrap())
            .unwrap();
    assert!(
        qc["qc"]["cross_batch_distance_after"].as_f64().unwrap()
            < qc["qc"]["cross_batch_distance_before"].as_f64().unwrap()
    );
    // Each bad file is in dlq/ with its reason.
    for (f, why) in [
        ("garbage.parquet", "garbage.parquet"),
        ("zz_nobatch.parquet", "Metadata_Batch"),
        ("zz_empty.parquet", "empty plate"),
        ("zz_nan.csv", "data row 2"),
    ] {
        let reason =
            std::fs::read_to_string(inbox.join("dlq").join(format!("{f}.reason.txt"))).unwrap();
        assert!(reason.contains(why), "{f}: {reason}");
        assert!(inbox.join("dlq").join(f).exists());
    }
    // A duplicate plate id with different content is dead-lettered; the same
    // content again is a replay with identical output and the same version.
    let (p0, t0) = &st.plates[0];
    let before = std::fs::read(outbox.join(format!("{p0}.qc.json"))).unwrap();
    let first_out = read_table(&outbox.join(format!("{p0}.parquet"))).unwrap();
    drop_plate(&inbox, &format!("{p0}.arrow"), t0);
    drop_plate(&inbox, "zz_clash.arrow", &t0.slice(0, t0.num_rows() - 1));
    let o = bin().args(&args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("re-published 1, rejected 1"));
    let reason =
        std::fs::read_to_string(inbox.join("dlq").join("zz_clash.arrow.reason.txt")).unwrap();
    assert!(reason.contains("duplicate plate id"), "{reason}");
    let again = read_table(&outbox.join(format!("{p0}.parquet"))).unwrap();
    assert_eq!(again.schema(), first_out.schema());
    let v0: serde_json::Value = serde_json::from_slice(&before).unwrap();
    let v1: serde_json::Value =
        serde_json::from_slice(&std::fs::read(outbox.join(format!("{p0}.qc.json"))).unwrap())
            .unwrap();
    assert_eq!(v0["model_version"], v1["model_version"]);
    assert_eq!(v1["replay"], true);
}

#[test]
fn kill_nine_mid_stream_loses_nothing() {
    let st = data();
    let (state, inbox, outbox) = st.dirs();
    let args = serve_args(&st, &state, &inbox, &outbox);
    let mut child = bin().args(&args).spawn().unwrap();
    // Feed plates one by one; kill -9 once some are out.
    let deadline = Instant::now() + Duration::from_secs(120);
    for (i, (p, t)) in st.plates.iter().enumerate() {
        drop_plate(&inbox, &format!("{p}.arrow"), t);
        if i == 2 {
            while outputs(&outbox).len() < 2 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            child.kill().unwrap(); // SIGKILL
        }
    }
    let _ = child.wait();
    // Restart, drain, stop.
    let mut args2 = args.clone();
    args2.push("--once".into());
    let o = bin().args(&args2).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        outputs(&outbox).len(),
        st.plates.len(),
        "every plate published"
    );
    for (p, _) in &st.plates {
        assert!(
            inbox.join("done").join(format!("{p}.arrow")).exists(),
            "{p} acknowledged"
        );
    }
    // The state holds each plate once: restart again with nothing to do.
    let state_meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("snapshot/meta.json")).unwrap()).unwrap();
    assert_eq!(
        state_meta["plates"].as_object().unwrap().len(),
        st.plates.len()
    );
}

#[test]
fn graceful_shutdown_on_sigterm_and_torn_log_tail() {
    let st = data();
    let (state, inbox, outbox) = st.dirs();
    let mut args = serve_args(&st, &state, &inbox, &outbox);
    let n = args.len();
    args[n - 1] = "100".into(); // --snapshot-every 100: the restart replays the log
    let (p, t) = &st.plates[0];
    drop_plate(&inbox, &format!("{p}.arrow"), t);
    let child = bin().args(&args).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while outputs(&outbox).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "SIGTERM exits 0");
    // A torn record at the log tail (crash mid-append) is ignored on restart.
    let mut wal = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(state.join("wal.log"))
        .unwrap();
    std::io::Write::write_all(&mut wal, &[200, 0, 0, 0, 1, 2, 3]).unwrap();
    drop(wal);
    let (p2, t2) = &st.plates[1];
    drop_plate(&inbox, &format!("{p2}.arrow"), t2);
    let mut args2 = args.clone();
    args2.push("--once".into());
    let o = bin().args(&args2).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(outputs(&outbox).len(), 2);
}

// ------------------------------------------------ issue 15: bad inputs

/// `t` with column `name` replaced by `col`.
fn with_column(t: &RecordBatch, name: &str, col: ArrayRef) -> RecordBatch {
    let i = t.schema().index_of(name).unwrap();
    let mut cols = t.columns().to_vec();
    let mut fields: Vec<Field> = t.schema().fields().iter().map(|f| (**f).clone()).collect();
    fields[i] = Field::new(name, col.data_type().clone(), true);
    cols[i] = col;
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap()
}

/// `t` with every plate id set to `id`.
fn renamed(t: &RecordBatch, id: &str) -> RecordBatch {
    let ids: ArrayRef = Arc::new(StringArray::from(vec![id; t.num_rows()]));
    with_column(t, "Metadata_Plate", ids)
}

fn reason(inbox: &Path, file: &str) -> String {
    std::fs::read_to_string(inbox.join("dlq").join(format!("{file}.reason.txt")))
        .unwrap_or_else(|e| panic!("{file}: no reason file: {e}"))
}

/// Cases 6, 7, 8, 12, 13 and the smaller ones: every bad file goes to
/// dlq/ with its reason, the good plates are published, the daemon exits 0.
#[test]
fn bad_plate_files_are_dead_lettered_and_the_feed_goes_on() {
    let st = data();
    let (state, inbox, outbox) = st.dirs();
    let (p0, t0) = &st.plates[0];
    drop_plate(&inbox, &format!("{p0}.arrow"), t0);
    // Re-encoded copy of the same plate (Parquet, other name): a replay.
    drop_plate(&inbox, "zz_reencoded.parquet", t0);
    let t1 = &st.plates[1].1;
    // 6. one text cell in a feature column (CSV).
    let csv = "Metadata_Batch,Metadata_Plate,Metadata_Label,Feature_000,Feature_001\n\
               Batch01,PT,DMSO,1.0,2.0\nBatch01,PT,x,1.5,oops\nBatch01,PT,y,2.0,3.0\n";
    std::fs::write(inbox.join("zz_text.csv"), csv).unwrap();
    // 7. an extreme value.
    let f = t1.column(t1.schema().index_of("Feature_003").unwrap());
    let mut v: Vec<f64> = f
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap()
        .values()
        .to_vec();
    v[4] = 1e300;
    drop_plate(
        &inbox,
        "zz_huge.arrow",
        &with_column(t1, "Feature_003", Arc::new(Float64Array::from(v))),
    );
    // 8. a duplicate column name (Parquet allows it).
    let mut fields: Vec<Field> = t1.schema().fields().iter().map(|f| (**f).clone()).collect();
    let mut cols = t1.columns().to_vec();
    let j = t1.schema().index_of("Feature_002").unwrap();
    fields.push(fields[j].clone());
    cols.push(cols[j].clone());
    let dup = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap();
    drop_plate(&inbox, "zz_dup.parquet", &dup);
    // Missing model feature: the reason names the file.
    let k = t1.schema().index_of("Feature_007").unwrap();
    let keep: Vec<usize> = (0..t1.num_columns()).filter(|&i| i != k).collect();
    drop_plate(&inbox, "zz_missing.arrow", &t1.project(&keep).unwrap());
    // Non-finite: the reason does not suggest --impute (serve has no such flag).
    std::fs::write(
        inbox.join("zz_nan.csv"),
        "Metadata_Batch,Metadata_Plate,Feature_000\nBatch01,PX,1.0\nBatch01,PX,nan\n",
    )
    .unwrap();
    // 13. over max_plate_bytes: dead-lettered without being read (garbage
    // would otherwise be "unreadable").
    std::fs::write(inbox.join("zz_big.parquet"), vec![7u8; 300_000]).unwrap();
    // 12. a file that cannot be read (reading /proc/self/mem at offset 0
    // fails with EIO, even as root, where mode 000 would not stop a read),
    // and one whose move to dlq/ fails too (dlq/<name> is a directory).
    #[cfg(target_os = "linux")]
    {
        std::os::unix::fs::symlink("/proc/self/mem", inbox.join("zz_unreadable.csv")).unwrap();
        std::os::unix::fs::symlink("/proc/self/mem", inbox.join("zz_stuck.csv")).unwrap();
        std::fs::create_dir_all(inbox.join("dlq").join("zz_stuck.csv")).unwrap();
    }
    let mut args = serve_args(&st, &state, &inbox, &outbox);
    args.push("--once".into());
    let o = bin()
        .args(&args)
        .env("BALANS_SERVE__MAX_PLATE_BYTES", "250000")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("corrected 1 plates, re-published 1"),
        "{stdout}"
    );
    assert!(inbox.join("done/zz_reencoded.parquet").exists());

    let r = reason(&inbox, "zz_text.csv");
    assert!(
        r.starts_with("schema:")
            && r.contains("zz_text.csv")
            && r.contains("Feature_001")
            && r.contains("data row 2"),
        "{r}"
    );
    let r = reason(&inbox, "zz_huge.arrow");
    assert!(
        r.starts_with("out_of_range:")
            && r.contains("zz_huge.arrow")
            && r.contains("Feature_003")
            && r.contains("data row 5")
            && !r.contains("--max-abs-value"),
        "{r}"
    );
    let r = reason(&inbox, "zz_dup.parquet");
    assert!(
        r.starts_with("schema:") && r.contains("zz_dup.parquet") && r.contains("Feature_002"),
        "{r}"
    );
    let r = reason(&inbox, "zz_missing.arrow");
    assert!(
        r.contains("zz_missing.arrow") && r.contains("Feature_007"),
        "{r}"
    );
    let r = reason(&inbox, "zz_nan.csv");
    assert!(
        r.starts_with("non_finite:") && r.contains("data row 2") && !r.contains("--impute"),
        "{r}"
    );
    let r = reason(&inbox, "zz_big.parquet");
    assert!(
        r.starts_with("oversized:") && r.contains("max_plate_bytes"),
        "{r}"
    );
    #[cfg(target_os = "linux")]
    {
        let r = reason(&inbox, "zz_unreadable.csv");
        assert!(
            r.starts_with("unreadable:") && r.contains("zz_unreadable.csv"),
            "{r}"
        );
        assert!(inbox
            .join("dlq/zz_unreadable.csv")
            .symlink_metadata()
            .is_ok());
        // Could not be moved: left in the inbox, skipped, the daemon went on.
        assert!(inbox.join("zz_stuck.csv").symlink_metadata().is_ok());
    }
}

/// Case 7, the QC side: a value far outside its feature's spread but below
/// `max_abs_value` (1e6 in a feature whose robust scale is about 1) is
/// accepted and corrected, and flagged in the plate's QC record
/// (`extreme_cells`, `max_abs_z`) and verdict (`extreme_values`); the other
/// plates are not flagged. `[qc] extreme_z` moves the bound.
#[test]
fn extreme_values_below_the_refusal_bound_are_flagged_in_qc() {
    let qc_of = |outbox: &Path, p: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(outbox.join(format!("{p}.qc.json"))).unwrap())
            .unwrap()
    };
    let st = data();
    let (p1, t1) = &st.plates[1];
    let f = t1.column(t1.schema().index_of("Feature_003").unwrap());
    let mut v: Vec<f64> = f
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap()
        .values()
        .to_vec();
    v[4] = 1e6;
    let extreme = renamed(
        &with_column(t1, "Feature_003", Arc::new(Float64Array::from(v))),
        "PE",
    );
    for (extreme_z, flagged) in [("50", true), ("1e15", false)] {
        let sub = st.dir.path().join(format!("z{extreme_z}"));
        let (state, inbox, outbox) = (sub.join("state"), sub.join("inbox"), sub.join("outbox"));
        std::fs::create_dir_all(&inbox).unwrap();
        let (p0, t0) = &st.plates[0];
        drop_plate(&inbox, &format!("{p0}.arrow"), t0);
        drop_plate(&inbox, &format!("{p1}.arrow"), t1);
        drop_plate(&inbox, "zz_extreme.arrow", &extreme);
        let mut args = serve_args(&st, &state, &inbox, &outbox);
        args.push("--once".into());
        let o = bin()
            .args(&args)
            .env("BALANS_QC__EXTREME_Z", extreme_z)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("corrected 3 plates"),
            "{}",
            String::from_utf8_lossy(&o.stdout)
        );
        let q = qc_of(&outbox, "PE");
        let cells = q["qc"]["extreme_cells"].as_u64().unwrap();
        let max_z = q["qc"]["max_abs_z"].as_f64().unwrap();
        assert!(max_z > 1e3 && max_z < 1e15, "{q}");
        assert_eq!(cells, u64::from(flagged), "{q}");
        assert_eq!(q["outlier"]["extreme_values"], flagged, "{q}");
        // Published, with the extreme value where it was.
        let out = read_table(&outbox.join("PE.parquet")).unwrap();
        assert_eq!(out.num_rows(), extreme.num_rows());
        for p in [p0, p1] {
            let q = qc_of(&outbox, p);
            assert_eq!(q["qc"]["extreme_cells"], 0, "{q}");
            assert!(q["qc"]["max_abs_z"].as_f64().unwrap() < 50.0, "{q}");
            assert_eq!(q["outlier"]["extreme_values"], false, "{q}");
        }
    }
}

/// The daemon's counter of plates with extreme values
/// (`balans_qc_extreme_plates_total`) follows the verdict's flag.
#[test]
fn extreme_plates_are_counted_in_the_metrics() {
    use balans::qc::{OutlierVerdict, PlateQc};
    let t = balans::serve::telemetry::Telemetry::new().unwrap();
    let count = |t: &balans::serve::telemetry::Telemetry| -> String {
        t.render()
            .lines()
            .find(|l| l.starts_with("balans_qc_extreme_plates_total "))
            .unwrap_or_else(|| panic!("no counter in\n{}", t.render()))
            .to_string()
    };
    assert_eq!(count(&t), "balans_qc_extreme_plates_total 0");
    let flagged = OutlierVerdict {
        extreme_values: true,
        ..OutlierVerdict::default()
    };
    t.plate_qc(&PlateQc::default(), &OutlierVerdict::default());
    t.plate_qc(&PlateQc::default(), &flagged);
    t.plate_qc(&PlateQc::default(), &flagged);
    assert_eq!(count(&t), "balans_qc_extreme_plates_total 2");
}

/// Cases 10 and 11: output names are injective and short enough, and a
/// restart after a long plate id makes progress.
#[test]
fn output_names_are_injective_and_fit_the_file_system() {
    let st = data();
    let (state, inbox, outbox) = st.dirs();
    let long = "L".repeat(300);
    let ids = ["X/Y", "X_Y", long.as_str()];
    for (i, id) in ids.iter().enumerate() {
        drop_plate(
            &inbox,
            &format!("p{i}.arrow"),
            &renamed(&st.plates[i].1, id),
        );
    }
    let mut args = serve_args(&st, &state, &inbox, &outbox);
    args.push("--once".into());
    for _ in 0..2 {
        let o = bin().args(&args).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let outs = outputs(&outbox);
    assert_eq!(outs.len(), 3, "{outs:?}");
    assert!(outs.contains(&"X%2FY.parquet".to_string()), "{outs:?}");
    assert!(outs.contains(&"X_Y.parquet".to_string()), "{outs:?}");
    assert!(outs.iter().all(|n| n.len() < 255), "{outs:?}");
    for i in 0..3 {
        assert!(inbox.join(format!("done/p{i}.arrow")).exists());
    }
    let qc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(outbox.join("X%2FY.qc.json")).unwrap()).unwrap();
    assert_eq!(qc["plate"], "X/Y");
}

/// Case 9 and the outbox's leftovers: a CSV written in place is read only
/// once complete; temporary names are ignored; `*.tmp-<pid>` files left by
/// a killed daemon are removed at start.
#[test]
fn inbox_files_are_read_only_once_complete() {
    let st = data();
    let (state, inbox, outbox) = st.dirs();
    std::fs::create_dir_all(&outbox).unwrap();
    std::fs::write(outbox.join("P.parquet.tmp-99999"), b"half").unwrap();
    std::fs::write(outbox.join(".P.qc.json.tmp"), b"half").unwrap();
    let (p0, t0) = &st.plates[0];
    let staging = st.dir.path().join("whole.csv");
    write_table(&staging, t0).unwrap();
    let text = std::fs::read_to_string(&staging).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let head = lines[..4].join("\n") + "\n";
    let tail = lines[4..].join("\n") + "\n";
    // Temporary names of a complete plate: never read.
    drop_plate(&inbox, ".hidden.arrow", &st.plates[1].1);
    std::fs::copy(&staging, inbox.join("copy.csv.part")).unwrap();
    let child = bin()
        .args(serve_args(&st, &state, &inbox, &outbox))
        .spawn()
        .unwrap();
    let mut child = scopeguard(child);
    std::thread::sleep(Duration::from_millis(1500)); // the daemon is up
    let path = inbox.join(format!("{p0}.csv"));
    std::fs::write(&path, &head).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut f, tail.as_bytes()).unwrap();
    drop(f);
    let deadline = Instant::now() + Duration::from_secs(60);
    while outputs(&outbox).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    child.0.kill().unwrap();
    let _ = child.0.wait();
    assert_eq!(outputs(&outbox), vec![format!("{p0}.parquet")]);
    let out = read_table(&outbox.join(format!("{p0}.parquet"))).unwrap();
    assert_eq!(
        out.num_rows(),
        t0.num_rows(),
        "the whole plate, not its first rows"
    );
    assert!(inbox.join(".hidden.arrow").exists());
    assert!(inbox.join("copy.csv.part").exists());
    assert!(!outbox.join("P.parquet.tmp-99999").exists());
    assert!(!outbox.join(".P.qc.json.tmp").exists());
}

/// Kills the child when dropped (a failed assertion does not leak it).
struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn scopeguard(c: std::process::Child) -> Guard {
    Guard(c)
}
