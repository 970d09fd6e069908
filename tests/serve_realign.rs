//! `balans realign` with the directory mode: a new generation refitted on
//! the published plates runs beside the live one (both outputs, the drift
//! between them on the QC records and in the metrics), survives kill -9
//! (of the daemon and of the realignment itself), and is promoted on the
//! operator's switch.

use std::path::Path;
use std::time::Duration;

use balans::io::table::read_table;

mod common;
use common::*;

/// `-q serve ...` in directory mode.
fn serve_args(st: &Data, state: &Path, inbox: &Path, outbox: &Path) -> Vec<String> {
    let mut v = vec!["-q".to_string()];
    v.extend(dir_args(st, state, inbox, outbox));
    v
}

/// `balans realign` for the same feed (extra arguments appended).
fn realign(
    st: &Data,
    state: &Path,
    inbox: &Path,
    outbox: &Path,
    extra: &[&str],
) -> std::process::Output {
    let mut args: Vec<String> = [
        "-q",
        "realign",
        "--reference",
        s(&st.reference),
        "--state-dir",
        s(state),
        "--inbox",
        s(inbox),
        "--outbox",
        s(outbox),
        "--batch-col",
        "Metadata_Batch",
        "--control",
        "Metadata_Label=DMSO",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    args.extend(extra.iter().map(|x| x.to_string()));
    bin().args(&args).output().unwrap()
}

fn qc(dir: &Path, plate: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join(format!("{plate}.qc.json"))).unwrap()).unwrap()
}

fn parquet_count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |rd| {
        rd.filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".parquet"))
            .count()
    })
}

fn meta(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("snapshot").join("meta.json")).unwrap()).unwrap()
}

/// Feed `plates` through `serve --once`.
fn serve_once(
    st: &Data,
    state: &Path,
    inbox: &Path,
    outbox: &Path,
    plates: &[(String, arrow_array::RecordBatch)],
) {
    for (p, t) in plates {
        drop_plate(inbox, &format!("{p}.arrow"), t);
    }
    let mut args = serve_args(st, state, inbox, outbox);
    args.push("--once".into());
    let o = bin().args(&args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn a_new_generation_runs_beside_the_live_one_until_promoted() {
    let st = data();
    let (state, inbox, outbox) = st.dirs();
    let (first, rest) = st.plates.split_at(4);
    serve_once(&st, &state, &inbox, &outbox, first);
    assert_eq!(parquet_count(&outbox), 4);

    // Refit on what was published, plus the reference.
    let o = realign(&st, &state, &inbox, &outbox, &["--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rec: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rec["generation"], 2);
    assert_eq!(rec["version"], "g2.p4");
    assert_eq!(rec["live_version"], "g1.p4");
    assert_eq!(rec["plates"].as_array().unwrap().len(), 4);
    let next = state.join("next");
    assert_eq!(meta(&next)["generation"], 2);
    assert!(next.join("realign.json").exists());
    // The refitted plates' new outputs, with the drift against what the
    // live generation published: a refit moves them, but not far.
    let g2 = outbox.join("g2");
    assert_eq!(parquet_count(&g2), 4);
    for (p, t) in first {
        let q = qc(&g2, p);
        assert_eq!(q["model_version"], "g2.p0");
        assert_eq!(q["replay"], true);
        let d = &q["generation_drift"];
        assert_eq!(d["next_version"], "g2.p0");
        assert!(
            d["live_version"].as_str().unwrap().starts_with("g1.p"),
            "{d}"
        );
        let drift = d["drift"].as_f64().unwrap();
        assert!(drift > 0.0 && drift < 0.5, "{d}");
        assert!(d["mean_shift"].as_f64().unwrap() > 0.0, "{d}");
        assert_eq!(
            read_table(&g2.join(format!("{p}.parquet")))
                .unwrap()
                .schema(),
            t.schema()
        );
    }
    // A second realignment is refused while one is under evaluation.
    let o = realign(&st, &state, &inbox, &outbox, &[]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("already holds a new generation"));
    let refit_out = read_table(&g2.join(format!("{}.parquet", first[0].0))).unwrap();

    // The daemon corrects the next plates with both generations.
    serve_once(&st, &state, &inbox, &outbox, rest);
    let mut next_versions = std::collections::BTreeSet::new();
    for (p, _) in rest {
        let live = qc(&outbox, p);
        let new = qc(&g2, p);
        assert!(live["model_version"].as_str().unwrap().starts_with("g1."));
        let v = new["model_version"].as_str().unwrap().to_string();
        assert!(v.starts_with("g2.p"), "{v}");
        next_versions.insert(v.clone());
        assert_eq!(new["replay"], false);
        for q in [&live, &new] {
            let d = &q["generation_drift"];
            assert_eq!(d["next_version"], v.as_str(), "{q}");
            assert_eq!(d["live_version"], live["model_version"]);
            assert!(d["mean_shift"].as_f64().unwrap() > 0.0);
        }
    }
    assert_eq!(next_versions.len(), rest.len(), "one version per plate");
    assert_eq!(
        meta(&next)["plates"].as_object().unwrap().len(),
        st.plates.len()
    );
    assert_eq!(
        meta(&state)["plates"].as_object().unwrap().len(),
        st.plates.len()
    );

    // A refitted plate sent again is a replay for both generations: the
    // new generation re-publishes what realign emitted, bit for bit.
    let (p0, t0) = &first[0];
    serve_once(&st, &state, &inbox, &outbox, &[(p0.clone(), t0.clone())]);
    assert_eq!(qc(&g2, p0)["model_version"], "g2.p0");
    assert_eq!(
        read_table(&g2.join(format!("{p0}.parquet"))).unwrap(),
        refit_out
    );

    // The switch: promoted at the next start.
    let o = realign(&st, &state, &inbox, &outbox, &["--promote"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(next.join("PROMOTE").exists());
    serve_once(&st, &state, &inbox, &outbox, &[]);
    assert!(!next.exists(), "next/ is the live generation now");
    assert_eq!(meta(&state)["generation"], 2);
    assert_eq!(
        meta(&state)["plates"].as_object().unwrap().len(),
        st.plates.len()
    );
    let retired = state.join("retired-g1");
    assert_eq!(meta(&retired)["generation"], 1);
    assert!(retired.join("realign.json").exists());
    // Published under g2 now, in the outbox itself; a refitted plate is a
    // replay with its g2 version.
    serve_once(&st, &state, &inbox, &outbox, &[(p0.clone(), t0.clone())]);
    let q = qc(&outbox, p0);
    assert_eq!(q["model_version"], "g2.p0");
    assert!(q.get("generation_drift").is_none(), "{q}");
    assert_eq!(
        read_table(&outbox.join(format!("{p0}.parquet"))).unwrap(),
        refit_out
    );
    // And the next realignment builds generation 3.
    let o = realign(
        &st,
        &state,
        &inbox,
        &outbox,
        &["--last", "2", "--no-reference", "--json"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rec: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rec["generation"], 3);
    assert_eq!(rec["plates"].as_array().unwrap().len(), 2);
    assert_eq!(rec["reference_rows"], 0);
}

#[test]
fn windows_choose_the_plates_and_missing_profiles_are_named() {
    let st = data();
    let (state, inbox, outbox) = st.dirs();
    serve_once(&st, &state, &inbox, &outbox, &st.plates);
    let batch4 = st.new_batch();
    let o = realign(
        &st,
        &state,
        &inbox,
        &outbox,
        &["--batches", "Batch04", "--no-emit", "--json"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rec: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let got: Vec<&str> = rec["plates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["plate"].as_str().unwrap())
        .collect();
    assert_eq!(got.len(), batch4.len());
    assert!(got.iter().all(|p| p.starts_with("Batch04")), "{got:?}");
    assert!(!outbox.join("g2").exists(), "--no-emit");
    std::fs::remove_dir_all(state.join("next")).unwrap();
    // Unknown plate / batch: named.
    let o = realign(&st, &state, &inbox, &outbox, &["--plates", "NoSuchPlate"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("NoSuchPlate"));
    let o = realign(&st, &state, &inbox, &outbox, &["--batches", "Batch09"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("Batch09"));
    // A published plate whose file is gone: named, nothing installed.
    let (p, _) = &st.plates[1];
    let gone = inbox.join("done").join(format!("{p}.arrow"));
    let aside = st.dir.path().join("aside.arrow");
    std::fs::rename(&gone, &aside).unwrap();
    let o = realign(
        &st,
        &state,
        &inbox,
        &outbox,
        &["--plates", &format!("{},{p}", st.plates[0].0)],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(p.as_str()) && err.contains("--plates-from"),
        "{err}"
    );
    assert!(!state.join("next").exists());
    // Given with --plates-from, it is found.
    let o = realign(
        &st,
        &state,
        &inbox,
        &outbox,
        &[
            "--plates",
            &format!("{},{p}", st.plates[0].0),
            "--plates-from",
            s(&inbox.join("done")),
            "--plates-from",
            s(&aside),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn kill_nine_during_a_realignment_loses_nothing() {
    let st = data();
    let (state, inbox, outbox) = st.dirs();
    let (first, rest) = st.plates.split_at(4);
    serve_once(&st, &state, &inbox, &outbox, first);

    // kill -9 the realignment itself, at some point of its run: either no
    // new generation or a complete one, never half of one.
    let mut args: Vec<String> = [
        "-q",
        "realign",
        "--reference",
        s(&st.reference),
        "--state-dir",
        s(&state),
        "--inbox",
        s(&inbox),
        "--outbox",
        s(&outbox),
        "--batch-col",
        "Metadata_Batch",
        "--control",
        "Metadata_Label=DMSO",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    args.push("--no-emit".into());
    let mut child = bin().args(&args).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let _ = child.kill();
    let _ = child.wait();
    if state.join("next").exists() {
        assert_eq!(
            meta(&state.join("next"))["generation"],
            2,
            "a complete generation"
        );
    } else {
        // A stale next.tmp/ (if any) is removed by the next realignment.
        let o = realign(&st, &state, &inbox, &outbox, &[]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(!state.join("next.tmp").exists());
    }
    assert!(state
        .join("next")
        .join("snapshot")
        .join("manifest.json")
        .exists());

    // kill -9 the daemon while it runs both generations.
    let log = st.dir.path().join("daemon-a.log");
    let d = Daemon::spawn(&serve_args(&st, &state, &inbox, &outbox), log, true);
    d.wait_ready();
    let g2 = outbox.join("g2");
    let before = parquet_count(&g2);
    for (i, (p, t)) in rest.iter().enumerate() {
        drop_plate(&inbox, &format!("{p}.arrow"), t);
        if i == 1 {
            wait_until("two plates under both generations", 120, || {
                parquet_count(&g2) >= before + 2
            });
        }
    }
    wait_until("the drift in the metrics", 60, || {
        common::scrape::Scrape::parse(&d.metrics()).get("balans_generation_drift_count", &[]) >= 2.0
    });
    let scrape = common::scrape::Scrape::parse(&d.metrics());
    assert_eq!(scrape.get("balans_next_generation", &[]), 2.0);
    assert_eq!(scrape.get("balans_model_generation", &[]), 1.0);
    assert!(
        scrape.get(
            "balans_generation_drift_last_plate",
            &[("figure", "mean_shift")]
        ) > 0.0
    );
    d.kill9();
    // Restart and drain: every plate under both generations, each once in
    // each generation's state.
    serve_once(&st, &state, &inbox, &outbox, &[]);
    for (p, _) in rest {
        assert!(
            inbox.join("done").join(format!("{p}.arrow")).exists(),
            "{p} acknowledged"
        );
        assert!(outbox.join(format!("{p}.parquet")).exists());
        assert!(g2.join(format!("{p}.parquet")).exists(), "{p} under g2");
    }
    let n = st.plates.len();
    assert_eq!(meta(&state)["plates"].as_object().unwrap().len(), n);
    let next_meta = meta(&state.join("next"));
    let plates = next_meta["plates"].as_object().unwrap();
    assert_eq!(plates.len(), n);
    let versions: std::collections::BTreeSet<&str> = rest
        .iter()
        .map(|(p, _)| plates[p.as_str()]["version"].as_str().unwrap())
        .collect();
    assert_eq!(
        versions.len(),
        rest.len(),
        "no plate incorporated twice: {versions:?}"
    );
}
