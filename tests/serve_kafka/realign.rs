//! `balans realign` through the real broker: the new generation is picked
//! up by the running daemon, every later plate is published under both
//! generations (same topic and key, the `balans-model-version` header tells
//! them apart) with the drift on `balans.qc`, a kill -9 while both run loses
//! nothing, and `realign --promote` switches the running daemon over.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use balans::serve::kafka::wire::{
    CT_ARROW_STREAM, H_CHUNK_COUNT, H_CHUNK_INDEX, H_CONTENT_TYPE, H_MODEL_VERSION, H_PLATE_ID,
    H_REPLAY,
};

use super::common::*;
use super::{start_daemon, Reader};

/// The aligned messages of `key`, by model version.
fn by_version(r: &Reader, key: &str) -> BTreeMap<String, Vec<Vec<u8>>> {
    let mut m: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for g in r.aligned.iter().filter(|g| g.key == key) {
        m.entry(g.headers[H_MODEL_VERSION].clone())
            .or_default()
            .push(g.payload.clone());
    }
    m
}

fn generations_of(r: &Reader, key: &str) -> BTreeSet<String> {
    by_version(r, key)
        .keys()
        .map(|v| v.split('.').next().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn realign_runs_beside_the_live_generation_and_survives_kill_nine() {
    let b = brokers();
    let d = data();
    let t = Topics::new("realign");
    create_topics(&b, &t, 1);
    let cfg = write_config(d.dir.path(), &t, &unique("g"), "");
    let state = d.dir.path().join("state");
    let (first, rest) = d.plates.split_at(4);
    let daemon = start_daemon(&d, &b, &cfg, &state, "a");
    let p = producer(&b);
    for (i, (id, table)) in first.iter().enumerate() {
        if i == 1 {
            // A chunked plate: realign reassembles it when it reads the topic.
            let bytes = balans::io::table::encode_ipc_stream(table).unwrap();
            let parts: Vec<&[u8]> = bytes.chunks(bytes.len().div_ceil(3)).collect();
            for (k, part) in parts.iter().enumerate() {
                send(
                    &p,
                    &t.plates,
                    id,
                    part,
                    &[
                        (H_CONTENT_TYPE, CT_ARROW_STREAM),
                        (H_PLATE_ID, id),
                        (H_CHUNK_INDEX, &k.to_string()),
                        (H_CHUNK_COUNT, &parts.len().to_string()),
                    ],
                );
            }
        } else {
            send_plate(&p, &t.plates, id, table);
        }
    }
    let mut r = Reader::new(&b, &t);
    r.until("the first plates", Some(&daemon), |r| {
        r.aligned_keys().len() == first.len()
    });

    // Realign while the daemon runs: it reads the plates topic again.
    let o = bin()
        .args([
            "-q",
            "realign",
            "--config",
            s(&cfg),
            "--state-dir",
            s(&state),
            "--reference",
            s(&d.reference),
            "--batch-col",
            "Metadata_Batch",
            "--control",
            "Metadata_Label=DMSO",
            "--brokers",
            &b,
            "--json",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rec: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rec["generation"], 2);
    assert_eq!(rec["plates"].as_array().unwrap().len(), first.len());
    for pl in rec["plates"].as_array().unwrap() {
        assert!(
            pl["source"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{}/0@", t.plates)),
            "{pl}"
        );
    }
    wait_until("the daemon picks the new generation up", 60, || {
        daemon.log().contains("new generation restored")
    });

    // Both generations publish; kill -9 once a plate is out under g2.
    send_plate(&p, &t.plates, &rest[0].0, &rest[0].1);
    send_plate(&p, &t.plates, &rest[1].0, &rest[1].1);
    let k0 = rest[0].0.clone();
    r.until("a plate under the new generation", Some(&daemon), |r| {
        generations_of(r, &k0).contains("g2")
    });
    daemon.kill9();
    for (id, table) in &rest[2..] {
        send_plate(&p, &t.plates, id, table);
    }
    let daemon = start_daemon(&d, &b, &cfg, &state, "b");
    r.until(
        "every later plate under both generations",
        Some(&daemon),
        |r| {
            rest.iter().all(|(k, _)| {
                let g = generations_of(r, k);
                g.contains("g1") && g.contains("g2")
            })
        },
    );
    for (k, _) in rest {
        let vs = by_version(&r, k);
        assert_eq!(
            vs.len(),
            2,
            "{k}: one version per generation: {:?}",
            vs.keys()
        );
        for (v, payloads) in &vs {
            // A re-publication after the kill is the same message.
            assert!(
                payloads.windows(2).all(|w| w[0] == w[1]),
                "{k} {v}: re-published differently"
            );
        }
    }
    r.read_for(Duration::from_millis(500));
    // The refitted plates: their one live version, and the refit's output
    // produced by realign (`g2.p0`, a replay; identical if the daemon
    // re-published it after the kill).
    for (k, _) in first {
        let vs = by_version(&r, k);
        assert_eq!(
            vs.keys().filter(|v| v.starts_with("g1.")).count(),
            1,
            "{k}: {:?}",
            vs.keys()
        );
        assert_eq!(
            vs.keys()
                .filter(|v| v.starts_with("g2."))
                .collect::<Vec<_>>(),
            ["g2.p0"],
            "{k}"
        );
        assert!(
            vs["g2.p0"].windows(2).all(|w| w[0] == w[1]),
            "{k}: re-published differently"
        );
        let g = r
            .aligned
            .iter()
            .find(|g| &g.key == k && g.headers[H_MODEL_VERSION] == "g2.p0")
            .unwrap();
        assert_eq!(g.headers[H_REPLAY], "true");
        let q: serde_json::Value =
            r.qc.iter()
                .filter(|q| &q.key == k)
                .map(|q| serde_json::from_slice(&q.payload).unwrap())
                .find(|v: &serde_json::Value| v["model_version"] == "g2.p0")
                .expect("the refit's QC record");
        assert!(
            q["generation_drift"]["drift"].as_f64().unwrap() > 0.0,
            "{q}"
        );
    }
    // Drift between the generations on balans.qc, on both records.
    for (k, _) in rest {
        let recs: Vec<serde_json::Value> =
            r.qc.iter()
                .filter(|q| &q.key == k)
                .map(|q| serde_json::from_slice(&q.payload).unwrap())
                .collect();
        let next: Vec<&serde_json::Value> = recs
            .iter()
            .filter(|v| v["model_version"].as_str().unwrap().starts_with("g2."))
            .collect();
        assert!(!next.is_empty(), "{k}: a g2 QC record");
        for v in &recs {
            let d = &v["generation_drift"];
            assert!(
                d["next_version"].as_str().unwrap().starts_with("g2."),
                "{v}"
            );
            assert!(
                d["live_version"].as_str().unwrap().starts_with("g1."),
                "{v}"
            );
            assert!(d["mean_shift"].as_f64().unwrap() > 0.0, "{v}");
        }
    }
    // The versions of the new generation are distinct per plate: none was
    // incorporated twice.
    let g2: BTreeSet<String> = rest
        .iter()
        .flat_map(|(k, _)| {
            by_version(&r, k)
                .into_keys()
                .filter(|v| v.starts_with("g2."))
        })
        .collect();
    assert_eq!(g2.len(), rest.len(), "{g2:?}");

    // The switch, while the daemon runs.
    let o = bin()
        .args(["-q", "realign", "--state-dir", s(&state), "--promote"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    wait_until("the promotion", 60, || {
        daemon
            .log()
            .contains("promoted: the new generation is live")
    });
    assert!(daemon.term());
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("snapshot").join("meta.json")).unwrap())
            .unwrap();
    assert_eq!(meta["generation"], 2);
    assert_eq!(meta["plates"].as_object().unwrap().len(), d.plates.len());
    assert!(state.join("retired-g1").join("RETIRED").exists());
    assert!(!state.join("next").exists());
}
