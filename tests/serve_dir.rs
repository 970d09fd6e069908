//! `balans serve` in the embedded directory mode: plates dropped in an inbox
//! are corrected and published once, bad plates are dead-lettered with a
//! reason, and a crash (kill -9) loses nothing.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use balans::io::table::read_table;

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
