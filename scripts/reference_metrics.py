#!/usr/bin/env python3
"""Generate reference fixtures for tests/metrics_reference.rs.

Computes every batch-correction metric with the reference packages
(scib-metrics 0.5.10, copairs 0.5.5, cpdrift 1.0.0, scikit-learn) on small
inputs and writes:

  tests/fixtures/metrics/<name>_emb.csv    metadata + embedding (all rows)
  tests/fixtures/metrics/<name>_base.csv   baseline embedding (PCR comparison)
  tests/fixtures/metrics/pca_input.csv     small matrix for the PCA check
  tests/fixtures/metrics/reference.json    reference values

Datasets
  bbbc021_none  real BBBC021 wells after the evaluation protocol (drop
                positional and zero-MAD features, robust median/MAD scaling,
                clip +-50) and PCA-50 fitted on the treated wells.
  bbbc021_dmso  the same after DMSO-centring per week (a real correction),
                PCA-50 again; baseline = bbbc021_none.
  synthetic     420 rows x 12 dims, 3 batches, labels built to exercise the
                skip paths (a label with < 10 rows, a single-batch label).

Neighbour graphs are exact (sklearn brute force) so the Rust side, which also
searches exactly, sees the same graphs; kBET is reported both with scib's own
pynndescent search in diffusion space ("kbet_pynndescent") and with that
search replaced by an exact one ("kbet"), which is what Rust must match.

Usage: /work/.venv-ref/bin/python scripts/reference_metrics.py [--out DIR]
"""
import argparse
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.neighbors import NearestNeighbors

import scib_metrics
import scib_metrics.nearest_neighbors as scib_nn
from scib_metrics.nearest_neighbors import NeighborsResults
from scib_metrics.utils import KMeans
import copairs.map as cmap
from cpdrift import replicate_distance, representation_drift

ROOT = Path(__file__).resolve().parents[1]
META = ["batch", "label", "compound", "treatment", "plate", "control"]


def exact_knn(x, k):
    k = min(k, x.shape[0])
    nn = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(x)
    d, i = nn.kneighbors(x)
    # Self first, distance 0 (as scib assumes and balans does).
    for r in range(x.shape[0]):
        if i[r, 0] != r:
            pos = np.where(i[r] == r)[0]
            j = pos[0] if len(pos) else k - 1
            i[r, 1 : j + 1] = i[r, 0:j].copy()
            d[r, 1 : j + 1] = d[r, 0:j].copy()
            i[r, 0], d[r, 0] = r, 0.0
    # sklearn's brute force computes |x|^2 + |y|^2 - 2 x.y, so the self
    # distance comes out as ~1e-6 rather than 0; pynndescent (scib's default)
    # returns an exact 0, and UMAP's rho (first non-zero distance) depends on it.
    d[:, 0] = 0.0
    return NeighborsResults(indices=i, distances=d)


def exact_pynndescent(x, n_neighbors, random_state=0, n_jobs=1):
    return exact_knn(np.asarray(x, dtype=np.float64), n_neighbors)


def kbet_both(nn50, batch, label):
    official, df = scib_metrics.kbet_per_label(nn50, batch, label, return_df=True)
    original = scib_nn.pynndescent
    scib_nn.pynndescent = exact_pynndescent
    try:
        exact, df_exact = scib_metrics.kbet_per_label(nn50, batch, label, return_df=True)
    finally:
        scib_nn.pynndescent = original
    per = {str(c): (None if pd.isna(s) else float(s)) for c, s in zip(df_exact["cluster"], df_exact["kBET"])}
    return float(official), float(exact), per


def nsc_oracle(x, treatment, compound, moa, batch):
    """Independent numpy NSC / NSCB (median profiles, cosine 1-NN)."""
    ts = sorted(set(treatment))
    prof, comp, lab, bats = [], [], [], []
    for t in ts:
        m = treatment == t
        prof.append(np.median(x[m], axis=0))
        comp.append(compound[m][0])
        lab.append(moa[m][0])
        bats.append(set(batch[m]))
    p = np.array(prof)
    p = p / np.linalg.norm(p, axis=1, keepdims=True)
    s = p @ p.T
    out = {}
    for name, need_batch in (("nsc", False), ("nscb", True)):
        hits = tot = 0
        for q in range(len(ts)):
            best, bi = -np.inf, None
            for c in range(len(ts)):
                if c == q or comp[c] == comp[q]:
                    continue
                if need_batch and bats[q] & bats[c]:
                    continue
                if s[q, c] > best:
                    best, bi = s[q, c], c
            if bi is not None:
                tot += 1
                hits += lab[bi] == lab[q]
        out[name] = hits / tot if tot else None
    return out


def copairs_presets(meta, emb):
    """The three mAP presets. Cross-batch and non-replicate mAP rank the
    non-control rows only (as the anchors of evaluation.md); the
    control-negative preset needs the controls as candidates. Queries are the
    non-control rows; "ap" is keyed by row index within the candidate set."""
    meta = meta.reset_index(drop=True).copy()
    meta["is_control"] = meta["control"].astype(str)
    treated = (meta["control"] == 0).to_numpy()
    presets = {
        "map_cross_batch": (["label"], ["batch", "compound"], [], ["label"], ["label"], "treated"),
        "map_nonrep": (["compound"], [], ["plate"], ["compound"], ["compound"], "treated"),
        "map_control": (["compound"], [], ["plate"], ["compound", "is_control"], ["compound"], "all"),
    }
    out = {}
    for name, (ps, pd_, ns, nd, group, cands) in presets.items():
        if cands == "treated":
            m, x = meta[treated].reset_index(drop=True), emb[treated]
        else:
            m, x = meta, emb
        ap = cmap.average_precision(m, x, ps, pd_, ns, nd, distance="cosine", progress_bar=False)
        ap = ap[ap["control"] == 0]
        ap = ap.dropna(subset=["average_precision"])
        ap = ap[ap["n_pos_pairs"] > 0]
        res = cmap.mean_average_precision(ap, group, null_size=10000, threshold=0.05, seed=0, progress_bar=False)
        out[name] = {
            "candidates": cands,
            "mean_map": float(res["mean_average_precision"].mean()),
            "fraction_retrieved": float(res["below_corrected_p"].mean()),
            "groups": {
                str(k): {"map": float(mp), "p_value": float(p), "corrected_p_value": float(c)}
                for k, mp, p, c in zip(
                    res[group[0]], res["mean_average_precision"], res["p_value"], res["corrected_p_value"]
                )
            },
            "ap": {int(r): float(a) for r, a in zip(ap.index, ap["average_precision"])},
        }
    return out


def metrics_for(meta, emb_all, base_all=None):
    treated = (meta["control"] == 0).to_numpy()
    x = emb_all[treated]
    m = meta[treated].reset_index(drop=True)
    batch, label = m["batch"].to_numpy(), m["label"].to_numpy()
    nn90 = exact_knn(x, 90)
    r = {}
    r["ilisi"] = float(scib_metrics.ilisi_knn(nn90, batch))
    r["clisi"] = float(scib_metrics.clisi_knn(nn90, label))
    r["graph_connectivity"] = float(scib_metrics.graph_connectivity(nn90.subset_neighbors(15), label))
    r["kbet_pynndescent"], r["kbet"], r["kbet_per_label"] = kbet_both(nn90.subset_neighbors(50), batch, label)
    r["silhouette_label"] = float(scib_metrics.silhouette_label(x, label))
    r["silhouette_batch"] = float(scib_metrics.silhouette_batch(x, label, batch))
    r["bras"] = float(scib_metrics.bras(x, label, batch))
    r["pcr_batch"] = float(scib_metrics.utils.principal_component_regression(x, batch, categorical=True))
    if base_all is not None:
        r["pcr_comparison"] = float(scib_metrics.pcr_comparison(base_all[treated], x, batch, categorical=True))
    km = KMeans(len(np.unique(label)))
    km.fit(x)
    clusters = np.asarray(km.labels_)
    r["kmeans_labels"] = [int(c) for c in clusters]
    r["nmi"] = float(normalized_mutual_info_score(label, clusters, average_method="arithmetic"))
    r["ari"] = float(adjusted_rand_score(label, clusters))
    r.update(nsc_oracle(x, m["treatment"].to_numpy(), m["compound"].to_numpy(), label, batch))
    r.update({k: v for k, v in copairs_presets(meta, emb_all).items()})
    return r


def write_csv(path, meta, emb):
    df = meta[META].copy()
    for c in META[:-1]:
        df[c] = df[c].astype(str).str.replace(",", ";", regex=False)
    feats = pd.DataFrame(emb, columns=[f"f{i}" for i in range(emb.shape[1])])
    pd.concat([df.reset_index(drop=True), feats], axis=1).to_csv(path, index=False, float_format="%.9g")


def pca_fit_transform(x_fit, x_all, k):
    mu = x_fit.mean(0)
    _, _, vt = np.linalg.svd(x_fit - mu, full_matrices=False)
    return (x_all - mu) @ vt[:k].T


def robust_scale(x):
    med = np.median(x, axis=0)
    mad = np.median(np.abs(x - med), axis=0)
    keep = mad > 0
    return np.clip((x[:, keep] - med[keep]) / mad[keep], -50, 50)


def bbbc021():
    df = pd.read_csv(ROOT / "data/bbbc021/bbbc021_wells_annotated.csv.gz")
    feat = [c for c in df.columns if not c.startswith("Metadata_")]
    feat = [c for c in feat if not re.search(r"_AreaShape_Center_|_Location_", c)]
    x = robust_scale(df[feat].to_numpy(np.float64))
    meta = pd.DataFrame(
        {
            "batch": df["Metadata_Week"],
            "label": df["Metadata_MoA"],
            "compound": df["Metadata_Compound"],
            "treatment": df["Metadata_Treatment"],
            "plate": df["Metadata_Plate"],
            "control": (df["Metadata_MoA"] == "DMSO").astype(int),
        }
    )
    treated = meta["control"].to_numpy() == 0
    pre = pca_fit_transform(x[treated], x, 50)
    xc = x.copy()
    for w in meta["batch"].unique():
        m = (meta["batch"] == w).to_numpy()
        xc[m] -= x[m & ~treated].mean(0)
    post = pca_fit_transform(xc[treated], xc, 50)
    return meta, pre, post, x.shape[1]


def synthetic():
    rng = np.random.default_rng(0)
    d = 12
    rows = []
    centres = {f"L{i}": rng.normal(0, 2.0, d) for i in range(6)}
    shifts = {f"b{i}": rng.normal(0, 1.0, d) for i in range(3)}
    # (label, compound, batch, plate count, wells)
    layout = []
    for li in range(4):
        for ci in range(3):
            layout.append((f"L{li}", f"c{li}_{ci}", f"b{ci}", 16))
    layout.append(("L4", "c4_0", "b0", 24))  # single-batch label
    layout.append(("L5", "c5_0", "b1", 4))  # tiny label
    layout.append(("L5", "c5_1", "b2", 4))
    for b in shifts:
        layout.append(("DMSO", "DMSO", b, 20))
    x, meta = [], []
    for lab, comp, b, n in layout:
        for w in range(n):
            centre = np.zeros(d) if lab == "DMSO" else centres[lab]
            x.append(centre + shifts[b] + rng.normal(0, 1.0, d))
            meta.append(
                {
                    "batch": b,
                    "label": lab,
                    "compound": comp,
                    "treatment": f"{comp}@{w % 2}",
                    "plate": f"{b}_p{w % 2}",
                    "control": int(lab == "DMSO"),
                }
            )
    x = np.array(x)
    meta = pd.DataFrame(meta)
    ctrl = meta["control"].to_numpy() == 1
    post = x.copy()
    for b in shifts:
        m = (meta["batch"] == b).to_numpy()
        post[m] -= x[m & ctrl].mean(0)
    return meta, x, post


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "tests/fixtures/metrics"))
    out = Path(ap.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    ref = {"versions": {"scib-metrics": scib_metrics.__version__, "copairs": "0.5.5", "cpdrift": "1.0.0"}}

    meta, pre, post, n_feat = bbbc021()
    write_csv(out / "bbbc021_none_emb.csv", meta, pre)
    write_csv(out / "bbbc021_dmso_emb.csv", meta, post)
    ref["bbbc021_none"] = metrics_for(meta, pre)
    ref["bbbc021_none"]["n_features_after_protocol"] = n_feat
    ref["bbbc021_dmso"] = metrics_for(meta, post, base_all=pre)
    ctrl = meta["control"].to_numpy() == 1
    ref["bbbc021_dmso"]["drift"] = float(representation_drift(pre, post, ctrl))
    tr = ~ctrl
    ref["bbbc021_dmso"]["replicate_distance"] = float(
        replicate_distance(pre[tr], meta["treatment"].to_numpy()[tr], meta["batch"].to_numpy()[tr])
    )

    smeta, spre, spost = synthetic()
    write_csv(out / "synthetic_base.csv", smeta, spre)
    write_csv(out / "synthetic_emb.csv", smeta, spost)
    ref["synthetic"] = metrics_for(smeta, spost, base_all=spre)
    rng = np.random.default_rng(1)
    rot = np.linalg.qr(rng.normal(size=(spost.shape[1], spost.shape[1])))[0]
    sctrl = smeta["control"].to_numpy() == 1
    # "after" = rotated copy of the corrected embedding (drift ~ 0 after gauge
    # fix) and rotated copy with real displacement (written to the fixture).
    moved = spost @ rot
    moved[~sctrl] += 0.3 * rng.normal(size=moved[~sctrl].shape)
    write_csv(out / "synthetic_moved.csv", smeta, moved)
    ref["synthetic"]["drift_rotation"] = float(representation_drift(spost, spost @ rot, sctrl))
    ref["synthetic"]["drift_moved"] = float(representation_drift(spost, moved, sctrl))
    ref["synthetic"]["drift_moved_ungauged"] = float(representation_drift(spost, moved, sctrl, gauge_fix=False))
    ref["synthetic"]["replicate_distance"] = float(
        replicate_distance(spost[~sctrl], smeta["treatment"].to_numpy()[~sctrl], smeta["batch"].to_numpy()[~sctrl])
    )

    # PCA parity: sklearn-equivalent SVD PCA of a small matrix.
    pin = rng.normal(size=(60, 8)) * np.arange(1, 9)
    pd.DataFrame(pin, columns=[f"f{i}" for i in range(8)]).to_csv(out / "pca_input.csv", index=False, float_format="%.17g")
    mu = pin.mean(0)
    _, s, vt = np.linalg.svd(pin - mu, full_matrices=False)
    ref["pca"] = {"variance": (s**2 / (pin.shape[0] - 1)).tolist(), "components": vt.tolist()}

    (out / "reference.json").write_text(json.dumps(ref, indent=1, sort_keys=True))
    print("wrote", out)


if __name__ == "__main__":
    main()
