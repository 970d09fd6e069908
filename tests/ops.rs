//! Operations (issue 6): the daemon's /metrics, /healthz and /readyz over
//! real HTTP, counters and histograms moving as plates (good and bad) flow,
//! per-plate QC outlier flags (and their history surviving a restart), and
//! the deploy/ artefacts: every metric name the alert rules and the Grafana
//! dashboard use is exported by the running daemon; YAML/JSON parse;
//! `promtool check rules` when promtool is installed. The listener's
//! limits under hostile clients (issue 15) are in `ops/listener.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, Float64Array, RecordBatch, StringArray};
use balans::io::profile::text_column;
use balans::io::table::read_table;

mod common;
use common::scrape::{exported, Scrape};
use common::*;

#[path = "ops/listener.rs"]
mod listener;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A copy of `t` as plate `id` with every feature multiplied by `factor`
/// (per-plate centring removes shifts; a scale change survives it).
fn scaled_plate(t: &RecordBatch, id: &str, factor: f64) -> RecordBatch {
    let cols: Vec<ArrayRef> = t
        .schema()
        .fields()
        .iter()
        .zip(t.columns())
        .map(|(f, c)| -> ArrayRef {
            if f.name() == "Metadata_Plate" {
                Arc::new(StringArray::from(vec![id; t.num_rows()]))
            } else if f.name().starts_with("Feature_") {
                let a = c.as_any().downcast_ref::<Float64Array>().unwrap();
                Arc::new(Float64Array::from_iter_values(
                    (0..a.len()).map(|i| a.value(i) * factor),
                ))
            } else {
                c.clone()
            }
        })
        .collect();
    RecordBatch::try_new(t.schema(), cols).unwrap()
}

fn count_files(dir: &Path, suffix: &str) -> usize {
    std::fs::read_dir(dir).map_or(0, |rd| {
        rd.filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(suffix))
            .count()
    })
}

/// The directory-mode daemon of `st` with `config`, listening for metrics.
fn start_dir(st: &Data, config: &Path) -> Daemon {
    let d = st.dir.path();
    let mut args = dir_args(st, &d.join("state"), &d.join("inbox"), &d.join("outbox"));
    args.extend(["--config".to_string(), s(config).to_string()]);
    Daemon::spawn_env(
        &args,
        &[("BALANS_LOG_FORMAT", "json")],
        d.join("daemon.log"),
        true,
    )
}

fn scrape(d: &Daemon) -> Scrape {
    Scrape::parse(&d.metrics())
}

fn qc_json(outbox: &Path, plate: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(outbox.join(format!("{plate}.qc.json"))).unwrap())
        .unwrap()
}

// ---------------------------------------------------------------- deploy/

/// balans_* names referenced by the alert rules' expressions.
fn alert_metric_names() -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo().join("deploy/prometheus/balans-alerts.yml")).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let mut exprs = Vec::new();
    for g in doc["groups"].as_sequence().unwrap() {
        for r in g["rules"].as_sequence().unwrap() {
            assert!(r["alert"].as_str().is_some(), "rule without a name: {r:?}");
            exprs.push(r["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(exprs.len() >= 5);
    names_in(&exprs)
}

/// balans_* names referenced by the dashboard's queries.
fn dashboard_metric_names() -> BTreeSet<String> {
    let text =
        std::fs::read_to_string(repo().join("deploy/grafana/balans-dashboard.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut exprs = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("expr" | "query" | "definition", serde_json::Value::String(s)) => {
                            out.push(s.clone())
                        }
                        _ => walk(x, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(&doc, &mut exprs);
    assert!(exprs.len() >= 10, "{exprs:?}");
    names_in(&exprs)
}

fn names_in(exprs: &[String]) -> BTreeSet<String> {
    let re = regex::Regex::new(r"\bbalans_[a-z0-9_]+").unwrap();
    exprs
        .iter()
        .flat_map(|e| re.find_iter(e).map(|m| m.as_str().to_string()))
        .collect()
}

// ---------------------------------------------------------------- tests

#[test]
fn metrics_health_and_qc_over_http() {
    let st = data();
    let (new_batch, known) = (st.new_batch(), st.known());
    let d = st.dir.path();
    let (inbox, outbox) = (d.join("inbox"), d.join("outbox"));
    let config = d.join("balans.toml");
    std::fs::write(&config, "[qc]\nmin_history = 2\n").unwrap();
    std::fs::create_dir_all(&inbox).unwrap();

    let daemon = start_dir(&st, &config);
    // The listener starts before the warm start (an offline fit of the
    // reference, hundreds of ms even on an idle machine): /healthz is 200
    // and /readyz 503 meanwhile; 200 once the state is restored and the
    // inbox is being scanned.
    let mut saw_503 = None;
    wait_until("/readyz 200", 120, || {
        match http_get(daemon.addr(), "/readyz") {
            Some((503, body)) => {
                saw_503.get_or_insert(body);
                false
            }
            Some((200, _)) => true,
            _ => false,
        }
    });
    let body = saw_503.expect("/readyz never answered 503 during the warm start");
    assert!(body.contains("state_restored false"), "{body}");
    assert_eq!(http_get(daemon.addr(), "/nothing").unwrap().0, 404);
    let m0 = scrape(&daemon);
    assert_eq!(m0.get("balans_plates_consumed_total", &[]), 0.0);
    assert_eq!(m0.get("balans_ready", &[]), 1.0);
    assert_eq!(
        m0.get(
            "balans_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    // Model version g1.p0.
    assert_eq!(m0.get("balans_model_generation", &[]), 1.0);
    assert_eq!(m0.get("balans_model_plates", &[]), 0.0);
    // Checkpoints count the daemon's snapshots (periodic and on shutdown),
    // not the warm start's initial one.
    assert_eq!(m0.get("balans_checkpoint_duration_seconds_count", &[]), 0.0);
    assert_eq!(m0.get("balans_last_checkpoint_timestamp_seconds", &[]), 0.0);
    let ref_rows = read_table(&st.reference).unwrap().num_rows() as f64;
    assert_eq!(m0.get("balans_model_rows", &[]), ref_rows);
    assert!(m0.get("balans_model_coverage", &[("quantile", "min")]) >= 0.0);

    // Good plates: the unseen batch first (its QC history grows), then one
    // scaled-up plate of it (an outlier), then the known batches' plates;
    // and three bad files.
    let mut good_rows = 0usize;
    let mut n_good = 0usize;
    for (i, (p, t)) in new_batch.iter().enumerate() {
        drop_plate(&inbox, &format!("a{i}_{p}.parquet"), t);
        good_rows += t.num_rows();
        n_good += 1;
    }
    let new_batch_rows = good_rows;
    let scaled = scaled_plate(&new_batch[0].1, "Batch04_Scaled", 8.0);
    drop_plate(&inbox, "b_scaled.parquet", &scaled);
    good_rows += scaled.num_rows();
    n_good += 1;
    for (p, t) in &known {
        drop_plate(&inbox, &format!("c_{p}.parquet"), t);
        good_rows += t.num_rows();
        n_good += 1;
    }
    std::fs::write(inbox.join("z_garbage.parquet"), b"not parquet").unwrap();
    drop_plate(&inbox, "z_empty.parquet", &known[0].1.slice(0, 0));
    std::fs::write(
        inbox.join("z_nan.csv"),
        "Metadata_Batch,Metadata_Plate,Feature_000\nBatch01,PX,1.0\nBatch01,PX,nan\n",
    )
    .unwrap();
    let n_bad = 3;
    wait_until("every plate processed", 300, || {
        count_files(&inbox.join("done"), ".parquet") == n_good
            && count_files(&inbox.join("dlq"), ".reason.txt") == n_bad
    });
    // The reason files start with the reason kind (the metric label).
    for (f, kind) in [
        ("z_garbage.parquet", "unreadable: "),
        ("z_empty.parquet", "empty: "),
        ("z_nan.csv", "non_finite: "),
    ] {
        let why =
            std::fs::read_to_string(inbox.join("dlq").join(format!("{f}.reason.txt"))).unwrap();
        assert!(why.starts_with(kind), "{f}: {why}");
    }
    // The counters move after the acknowledgement: give the last one a beat.
    wait_until("counters", 10, || {
        scrape(&daemon).get("balans_plates_published_total", &[("replay", "false")])
            == n_good as f64
    });
    let m = scrape(&daemon);
    assert_eq!(
        m.get("balans_plates_consumed_total", &[]),
        (n_good + n_bad) as f64
    );
    assert_eq!(
        m.get("balans_plates_published_total", &[("replay", "true")]),
        0.0
    );
    assert_eq!(m.get("balans_rows_published_total", &[]), good_rows as f64);
    // Consumed rows: good rows + the NaN csv's 2 rows (+ 0 for the empty
    // plate; the garbage file is unreadable).
    assert_eq!(
        m.get("balans_rows_consumed_total", &[]),
        (good_rows + 2) as f64
    );
    for (reason, n, rows) in [
        ("unreadable", 1.0, 0.0),
        ("empty", 1.0, 0.0),
        ("non_finite", 1.0, 2.0),
        ("schema", 0.0, 0.0),
        ("duplicate", 0.0, 0.0),
    ] {
        assert_eq!(
            m.get("balans_plates_dead_lettered_total", &[("reason", reason)]),
            n,
            "{reason}"
        );
        assert_eq!(
            m.get("balans_rows_dead_lettered_total", &[("reason", reason)]),
            rows,
            "{reason}"
        );
    }
    assert_eq!(
        m.get("balans_plate_latency_seconds_count", &[]),
        n_good as f64
    );
    assert!(m.get("balans_plate_latency_seconds_sum", &[]) > 0.0);
    assert_eq!(
        m.get("balans_plate_latency_seconds_bucket", &[("le", "+Inf")]),
        n_good as f64
    );
    for stage in [
        "sampling",
        "correction",
        "qc",
        "encode",
        "wal",
        "write",
        "index_update",
    ] {
        assert_eq!(
            m.get("balans_stage_duration_seconds_count", &[("stage", stage)]),
            n_good as f64,
            "{stage}"
        );
    }
    // Decode is timed for every plate that decoded (good ones here).
    assert_eq!(
        m.get(
            "balans_stage_duration_seconds_count",
            &[("stage", "decode")]
        ),
        n_good as f64
    );
    assert_eq!(
        m.get(
            "balans_stage_duration_seconds_count",
            &[("stage", "produce")]
        ),
        0.0
    );
    assert_eq!(
        m.get(
            "balans_consumer_lag",
            &[("topic", "inbox"), ("partition", "0")]
        ),
        0.0
    );
    assert_eq!(
        m.get("balans_indexed_rows", &[("batch", "Batch04")]),
        (new_batch_rows + scaled.num_rows()) as f64
    );
    assert_eq!(m.get("balans_model_rows", &[]), ref_rows + good_rows as f64);
    assert_eq!(m.get("balans_model_plates", &[]), n_good as f64);
    assert_eq!(m.get("balans_model_generation", &[]), 1.0);
    let last = qc_json(&outbox, &known[known.len() - 1].0);
    assert_eq!(
        last["model_version"].as_str().unwrap(),
        format!("g1.p{}", n_good - 1),
        "the last plate was corrected with the version before it was added"
    );
    assert!(m.get("balans_landmarks_total", &[]) >= good_rows as f64);
    assert_eq!(
        m.get("balans_commit_duration_seconds_count", &[]),
        n_good as f64
    );
    assert_eq!(m.get("balans_commit_failures_total", &[]), 0.0);
    // snapshot_every = 3: a snapshot after every third plate.
    assert_eq!(
        m.get("balans_checkpoint_duration_seconds_count", &[]),
        (n_good / 3) as f64
    );
    assert_eq!(m.get("balans_checkpoint_failures_total", &[]), 0.0);
    assert!(m.get("balans_last_checkpoint_timestamp_seconds", &[]) > 1.6e9);
    assert!(m.get("balans_last_publish_timestamp_seconds", &[]) > 1.6e9);
    assert_eq!(
        m.get("balans_qc_mixing_count", &[("correction", "after")]),
        n_good as f64
    );

    // QC: the scaled plate is an outlier with reasons; the metrics agree
    // with the QC records.
    let qc = qc_json(&outbox, "Batch04_Scaled");
    assert_eq!(qc["outlier"]["outlier"], true, "{qc:#}");
    assert_eq!(
        qc["outlier"]["history"].as_u64().unwrap(),
        new_batch.len() as u64
    );
    let reasons: Vec<String> = qc["outlier"]["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    assert!(!reasons.is_empty());
    eprintln!("scaled plate flagged for {reasons:?}");
    let first = qc_json(&outbox, &new_batch[0].0);
    assert_eq!(first["outlier"]["history"], 0);
    assert_eq!(first["outlier"]["outlier"], false);
    assert!(first["qc"]["new_batch"].as_bool().unwrap());
    let mut flagged = 0;
    let mut by_reason: BTreeMap<String, usize> = BTreeMap::new();
    for name in std::fs::read_dir(&outbox).unwrap() {
        let name = name.unwrap().file_name().to_string_lossy().to_string();
        if let Some(p) = name.strip_suffix(".qc.json") {
            let q = qc_json(&outbox, p);
            if q["outlier"]["outlier"] == true {
                flagged += 1;
                for r in q["outlier"]["reasons"].as_array().unwrap() {
                    *by_reason
                        .entry(r.as_str().unwrap().to_string())
                        .or_default() += 1;
                }
            }
        }
    }
    assert_eq!(m.get("balans_qc_outlier_plates_total", &[]), flagged as f64);
    for (r, n) in &by_reason {
        assert_eq!(
            m.get("balans_qc_outlier_reasons_total", &[("reason", r.as_str())]),
            *n as f64
        );
    }

    // deploy/: every name the alert rules and the dashboard use is exported.
    let names = m.names();
    let rules = alert_metric_names();
    let dash = dashboard_metric_names();
    assert!(rules.contains("balans_consumer_lag") && dash.contains("balans_qc_last_plate"));
    let missing: Vec<&String> = rules
        .iter()
        .chain(&dash)
        .filter(|n| !exported(&names, n))
        .collect();
    assert!(
        missing.is_empty(),
        "referenced but not exported: {missing:?}"
    );

    // JSON logs: one object per line; one `plate published` line per plate
    // with the documented fields.
    let log = daemon.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let published: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|v| v["fields"]["message"] == "plate published")
        .collect();
    assert_eq!(published.len(), n_good, "{log}");
    for f in [
        "plate",
        "batch",
        "rows",
        "source",
        "version",
        "publish_s",
        "latency_s",
    ] {
        assert!(
            !published[0]["fields"][f].is_null(),
            "{f}: {}",
            published[0]
        );
    }
    // Restart: the QC history survives (snapshot + log), so a second
    // scaled plate is judged against every previous Batch04 plate.
    assert!(daemon.term(), "SIGTERM exits 0");
    let daemon = start_dir(&st, &config);
    wait_until("/readyz 200 after restart", 120, || {
        matches!(http_get(daemon.addr(), "/readyz"), Some((200, _)))
    });
    let m = scrape(&daemon);
    assert_eq!(m.get("balans_model_plates", &[]), n_good as f64);
    assert_eq!(m.get("balans_plates_consumed_total", &[]), 0.0);
    let again = scaled_plate(&new_batch[1].1, "Batch04_Scaled2", 8.0);
    drop_plate(&inbox, "d_scaled.parquet", &again);
    wait_until("the second scaled plate", 120, || {
        outbox.join("Batch04_Scaled2.qc.json").exists()
    });
    let qc = qc_json(&outbox, "Batch04_Scaled2");
    assert_eq!(
        qc["outlier"]["history"].as_u64().unwrap(),
        new_batch.len() as u64 + 1,
        "{qc:#}"
    );
    assert!(daemon.term(), "SIGTERM exits 0");
}

#[test]
fn deploy_artefacts_parse_and_agree_with_the_repo() {
    // Kubernetes manifests and alert rules are valid YAML of the right kinds.
    let mut kinds = BTreeSet::new();
    for f in std::fs::read_dir(repo().join("deploy/k8s")).unwrap() {
        let p = f.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap();
        let doc: serde_yaml::Value =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        kinds.insert(doc["kind"].as_str().unwrap().to_string());
    }
    for k in [
        "StatefulSet",
        "Service",
        "ConfigMap",
        "Kustomization",
        "Namespace",
    ] {
        assert!(kinds.contains(k), "{k} missing from deploy/k8s: {kinds:?}");
    }
    let sts: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join("deploy/k8s/statefulset.yaml")).unwrap(),
    )
    .unwrap();
    let c = &sts["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"].is_string());
    // The ConfigMap carries config/balans.toml verbatim.
    let cm: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join("deploy/k8s/configmap.yaml")).unwrap(),
    )
    .unwrap();
    let shipped = std::fs::read_to_string(repo().join("config/balans.toml")).unwrap();
    assert_eq!(
        cm["data"]["balans.toml"].as_str().unwrap().trim_end(),
        shipped.trim_end(),
        "deploy/k8s/configmap.yaml drifted from config/balans.toml"
    );
    // The alert rules cover the issue's list; the dashboard parses.
    let rules =
        std::fs::read_to_string(repo().join("deploy/prometheus/balans-alerts.yml")).unwrap();
    for a in [
        "BalansFeedStalled",
        "BalansConsumerLagGrowing",
        "BalansDeadLetterRate",
        "BalansQcOutlierPlates",
        "BalansCheckpointFailures",
    ] {
        assert!(rules.contains(&format!("alert: {a}")), "{a}");
    }
    assert!(!alert_metric_names().is_empty());
    assert!(!dashboard_metric_names().is_empty());
    // kubectl, when installed: the kustomization renders.
    if let Ok(o) = Command::new("kubectl")
        .args(["kustomize"])
        .arg(repo().join("deploy/k8s"))
        .output()
    {
        assert!(
            o.status.success(),
            "kubectl kustomize deploy/k8s failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("kind: StatefulSet") && out.contains("namespace: balans"));
    }
    // systemd-analyze, when installed: the unit verifies (with ExecStart
    // pointing at this build's binary, since /usr/local/bin/balans is not
    // installed here).
    let unit = std::fs::read_to_string(repo().join("deploy/systemd/balans.service")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("balans.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/balans", env!("CARGO_BIN_EXE_balans")),
    )
    .unwrap();
    if let Ok(o) = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
    {
        assert!(
            o.status.success(),
            "systemd-analyze verify failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // promtool, when installed (Debian: apt-get install prometheus):
    // syntax, then the alert unit tests (stalled feed, dead-letter rate, ...).
    for (what, file) in [
        ("check", "deploy/prometheus/balans-alerts.yml"),
        ("test", "deploy/prometheus/tests/balans-alerts_test.yml"),
    ] {
        match Command::new("promtool")
            .args([what, "rules"])
            .arg(repo().join(file))
            .output()
        {
            Ok(o) => assert!(
                o.status.success(),
                "promtool {what} rules {file} failed:\n{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(_) => {
                eprintln!("promtool not installed: promtool {what} rules skipped");
                break;
            }
        }
    }
}

#[test]
fn correct_writes_the_per_plate_qc_table() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("t.parquet");
    let o = bin()
        .args([
            "-q",
            "synth",
            "--rows",
            "1200",
            "--batches",
            "3",
            "--features",
            "12",
            "--seed",
            "4",
            "--output",
        ])
        .arg(&input)
        .output()
        .unwrap();
    assert!(o.status.success());
    let qc = dir.path().join("qc.csv");
    let o = bin()
        .args([
            "-q",
            "correct",
            "--batch-col",
            "Metadata_Batch",
            "--control",
        ])
        .arg("Metadata_Label=DMSO")
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(dir.path().join("out.parquet"))
        .arg("--qc")
        .arg(&qc)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t = read_table(&qc).unwrap();
    let src = read_table(&input).unwrap();
    let mut plates = text_column(&src, "Metadata_Plate", "t").unwrap();
    plates.sort();
    plates.dedup();
    assert_eq!(t.num_rows(), plates.len());
    for col in [
        "plate",
        "batch",
        "rows",
        "controls",
        "mixing_before",
        "mixing_after",
        "mean_offset",
        "control_dispersion",
        "outlier",
        "outlier_reasons",
    ] {
        assert!(t.schema().column_with_name(col).is_some(), "{col}");
    }
    // Rows add up; correction improves mixing on average.
    let rows = t
        .column_by_name("rows")
        .unwrap()
        .as_any()
        .downcast_ref::<arrow_array::Int64Array>()
        .map(|a| a.values().iter().sum::<i64>() as usize)
        .or_else(|| {
            t.column_by_name("rows")
                .unwrap()
                .as_any()
                .downcast_ref::<arrow_array::UInt64Array>()
                .map(|a| a.values().iter().sum::<u64>() as usize)
        })
        .unwrap();
    assert_eq!(rows, src.num_rows());
    let mean = |c: &str| {
        let a = t.column_by_name(c).unwrap();
        let a = a.as_any().downcast_ref::<Float64Array>().unwrap();
        (0..a.len()).map(|i| a.value(i)).sum::<f64>() / a.len() as f64
    };
    assert!(
        mean("mixing_after") > mean("mixing_before"),
        "after {} before {}",
        mean("mixing_after"),
        mean("mixing_before")
    );
    assert!(mean("mean_offset") > 0.0);
}

// ---------------------------------------------------------------- both modes

/// A plain file where `StateDir::snapshot` creates its `snapshot.tmp/`
/// directory: every snapshot fails until it is removed.
fn break_snapshots(state: &Path) -> PathBuf {
    let blocker = state.join("snapshot.tmp");
    std::fs::write(&blocker, b"not a directory").unwrap();
    blocker
}

/// Wait until `balans_plates_published_total{replay="false"}` reaches `n`.
fn wait_published(daemon: &Daemon, n: usize) -> Scrape {
    let mut last = None;
    wait_until(&format!("{n} plates published"), 120, || {
        let m = scrape(daemon);
        let done = m.get("balans_plates_published_total", &[("replay", "false")]) >= n as f64;
        last = Some(m);
        done
    });
    last.unwrap()
}

/// The failure policy of periodic snapshots, checked in one mode: a failed
/// snapshot is logged and counted, plates keep flowing, the snapshot is
/// retried at the next plate and succeeds once the cause is gone; the
/// shutdown checkpoint then finds nothing left to write and the state holds
/// every plate.
fn failed_checkpoints_are_counted_and_retried(
    daemon: Daemon,
    state: &Path,
    feed: &dyn Fn(&(String, RecordBatch)),
    plates: &[(String, RecordBatch)],
) {
    daemon.wait_ready();
    let blocker = break_snapshots(state);
    // snapshot_every = 3: plate 3 fails the snapshot, plate 4 retries it.
    for p in &plates[..4] {
        feed(p);
    }
    wait_published(&daemon, 4);
    // The checkpoint runs after a plate is reported: wait for the retry.
    let mut m = scrape(&daemon);
    wait_until("two failed checkpoints", 120, || {
        m = scrape(&daemon);
        m.get("balans_checkpoint_failures_total", &[]) >= 2.0
    });
    assert_eq!(m.get("balans_last_checkpoint_timestamp_seconds", &[]), 0.0);
    assert_eq!(m.get("balans_model_plates", &[]), 4.0);
    let failed = m.get("balans_checkpoint_failures_total", &[]);
    std::fs::remove_file(&blocker).unwrap();
    feed(&plates[4]);
    wait_published(&daemon, 5);
    let mut m = scrape(&daemon);
    wait_until("a good checkpoint", 120, || {
        m = scrape(&daemon);
        m.get("balans_last_checkpoint_timestamp_seconds", &[]) > 1.6e9
    });
    assert_eq!(m.get("balans_checkpoint_failures_total", &[]), failed);
    let log = daemon.log();
    assert!(log.contains("checkpoint failed"), "{log}");
    assert!(daemon.term(), "SIGTERM exits 0");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("snapshot/meta.json")).unwrap()).unwrap();
    assert_eq!(meta["plates"].as_object().unwrap().len(), 5);
}

#[test]
fn failed_checkpoint_is_not_fatal_directory_mode() {
    let st = data();
    let d = st.dir.path();
    let inbox = d.join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let config = d.join("balans.toml");
    std::fs::write(&config, "").unwrap();
    let daemon = start_dir(&st, &config);
    let feed = |(p, t): &(String, RecordBatch)| drop_plate(&inbox, &format!("{p}.parquet"), t);
    failed_checkpoints_are_counted_and_retried(daemon, &d.join("state"), &feed, &st.plates);
}

/// The Kafka-mode daemon of `d` listening for metrics, on fresh topics.
fn start_kafka(d: &Data, b: &str, test: &str) -> (Daemon, Topics) {
    let t = Topics::new(test);
    create_topics(b, &t, 1);
    let cfg = write_config(d.dir.path(), &t, &unique("g"), "");
    let state = d.dir.path().join("state");
    let log = d.dir.path().join("daemon.log");
    let daemon = Daemon::spawn(&kafka_args(d, b, &cfg, &state), log, true);
    (daemon, t)
}

#[test]
fn failed_checkpoint_is_not_fatal_kafka_mode() {
    let b = brokers();
    let st = data();
    let (daemon, t) = start_kafka(&st, &b, "ckpt");
    let p = producer(&b);
    let feed = |(id, table): &(String, RecordBatch)| send_plate(&p, &t.plates, id, table);
    failed_checkpoints_are_counted_and_retried(
        daemon,
        &st.dir.path().join("state"),
        &feed,
        &st.plates,
    );
}

/// Kafka mode feeds the same families as the directory mode: the model
/// gauges (coverage included, from the start) and the per-plate counters.
#[test]
fn kafka_mode_metrics_cover_the_model_and_the_plates() {
    let b = brokers();
    let st = data();
    let (daemon, t) = start_kafka(&st, &b, "ops");
    daemon.wait_ready();
    let m0 = scrape(&daemon);
    let ref_rows = read_table(&st.reference).unwrap().num_rows() as f64;
    assert_eq!(m0.get("balans_model_rows", &[]), ref_rows);
    assert_eq!(m0.get("balans_model_generation", &[]), 1.0);
    for q in ["min", "median"] {
        let c = m0.get("balans_model_coverage", &[("quantile", q)]);
        assert!(c.is_finite() && c >= 0.0, "coverage {q} = {c}");
    }
    let p = producer(&b);
    let plates = &st.plates[..3];
    let rows: usize = plates.iter().map(|(_, t)| t.num_rows()).sum();
    for (id, table) in plates {
        send_plate(&p, &t.plates, id, table);
    }
    send(&p, &t.plates, "junk", b"not a plate", &[]);
    wait_published(&daemon, 3);
    wait_until("the dead letter counted", 60, || {
        scrape(&daemon).get(
            "balans_plates_dead_lettered_total",
            &[("reason", "unreadable")],
        ) == 1.0
    });
    let m = scrape(&daemon);
    assert_eq!(m.get("balans_plates_consumed_total", &[]), 4.0);
    assert_eq!(m.get("balans_rows_consumed_total", &[]), rows as f64);
    assert_eq!(m.get("balans_rows_published_total", &[]), rows as f64);
    assert_eq!(m.get("balans_model_plates", &[]), 3.0);
    assert_eq!(m.get("balans_model_rows", &[]), ref_rows + rows as f64);
    assert_eq!(m.get("balans_plate_latency_seconds_count", &[]), 3.0);
    for stage in [
        "decode",
        "sampling",
        "correction",
        "qc",
        "encode",
        "wal",
        "produce",
        "index_update",
    ] {
        assert_eq!(
            m.get("balans_stage_duration_seconds_count", &[("stage", stage)]),
            3.0,
            "{stage}"
        );
    }
    assert_eq!(
        m.get("balans_stage_duration_seconds_count", &[("stage", "write")]),
        0.0
    );
    // snapshot_every = 3: one checkpoint, after which coverage is recomputed.
    assert_eq!(m.get("balans_checkpoint_duration_seconds_count", &[]), 1.0);
    assert_eq!(m.get("balans_checkpoint_failures_total", &[]), 0.0);
    for q in ["min", "median"] {
        assert!(m
            .get("balans_model_coverage", &[("quantile", q)])
            .is_finite());
    }
    assert!(m.get("balans_commit_duration_seconds_count", &[]) >= 1.0);
    assert_eq!(m.get("balans_ready", &[]), 1.0);
    assert_eq!(
        m.get("balans_qc_mixing_count", &[("correction", "after")]),
        3.0
    );
    assert!(m.get("balans_last_publish_timestamp_seconds", &[]) > 1.6e9);
    assert!(daemon.term(), "SIGTERM exits 0");
}
