#!/usr/bin/env python3
"""Anchor harness: re-run the published batch-correction anchors beside balans
on the bundled BBBC021 table and score every output with `balans evaluate`.

Protocol (shared/research/evaluation.md, "Numbers to beat on real data"):
drop the positional columns (`*_AreaShape_Center_*`, `*_Location_*`) and the
zero-MAD features; robust global scaling (median / MAD over all wells, MAD not
rescaled, clip +-50); batch = Metadata_Week, label = Metadata_MoA, controls =
DMSO. Methods:

  none (scaled)               the scaled table itself
  DMSO-centre per week        subtract the per-week median of the DMSO wells
  ComBat (scanpy)             scanpy.pp.combat, key = batch
  sphering (DMSO, eps 1e-2)   pycytominer.normalize(method="spherize"), fitted on DMSO
  Harmony (PCA-50)            harmonypy.run_harmony on the PCA-50 of the scaled table
  Scanorama                   scanorama.assemble on each week's PCA-50 (= scanpy's scanorama_integrate)
  Seurat RPCA                 Seurat 4 (R) IntegrateData with reduction = "rpca",
                              only when Rscript and the Seurat package are installed
  balans                      `balans correct` on the raw table (CLI wall time)
  balans, streamed            `balans serve` (directory mode) warm-started on the
                              first 30% of the batches in natural order (BBBC021:
                              weeks 1-3), then fed the other batches one plate file
                              at a time in batch order; the published plates plus
                              the reference fit's rows (`balans correct` on those
                              batches, the fit the daemon warm-starts from) are
                              scored (wall time of the serve run)
  balans, streamed, split S    method `balans_stream@S`: the same with another
                              choice of warm-start batches and arrival order
                              (STREAM_SPLITS: early = the row above, late, spread,
                              shuffled); benches/anchors/stream_gap.py scores
                              every split against the offline fit (issue #17)

Each output is written to OUT/<method>.parquet with the table's Metadata_
columns; feature methods keep the feature column names, embedding methods
(Harmony, Scanorama) write PC_01..PC_50. Scoring (`balans evaluate --json`):

  * feature outputs of the Python anchors are already in the protocol's scaled
    space, so they are scored with `--no-robust-scale` (PCA-50 fitted by
    evaluate on the treated wells), baseline = the none (scaled) table;
  * embedding outputs are the metric space itself: `--pca 0 --no-robust-scale`,
    baseline = the PCA-50 embedding of the scaled table (OUT/none_pca50.parquet,
    the same embedding Harmony starts from) — evaluate matches baseline
    features by column name, so the baseline must carry PC_01..PC_50 too;
  * balans writes its output in the input's (raw) units, so it is scored with
    evaluate's own robust scaling (the protocol's scaling step, which is the
    identity on an already scaled table), baseline = the none (scaled) table.

A method that fails is reported as failed, with its reason, in the table; the
script exits non-zero if any method or any scoring failed.

Run: `bash benches/anchors/run.sh` (creates .venv-anchors, installs the pins).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[2]
POSITIONAL = re.compile(r"_AreaShape_Center_|_Location_")
BALANS_EXCLUDE = "_Location_|_Center_"
META_PREFIX = "Metadata_"

# Table columns: (header, key in `balans evaluate --json`).
METRICS = [
    ("BRAS", "bras"),
    ("iLISI", "ilisi"),
    ("kBET", "kbet"),
    ("graph conn.", "graph_connectivity"),
    ("PCR cmp.", "pcr_comparison"),
    ("NMI", "nmi"),
    ("ARI", "ari"),
    ("sil. label", "silhouette_label"),
    ("cLISI", "clisi"),
    ("batch", "batch"),
    ("bio", "bio"),
    ("total", "total"),
    ("x-batch mAP", "map_cross_batch"),
    ("NSCB", "nscb"),
]
# evaluation.md's column headers for the same keys.
REFERENCE_HEADERS = {
    "NMI": "nmi",
    "ARI": "ari",
    "sil. label": "silhouette_label",
    "cLISI": "clisi",
    "BRAS": "bras",
    "iLISI": "ilisi",
    "kBET": "kbet",
    "graph conn.": "graph_connectivity",
    "PCR cmp.": "pcr_comparison",
    "batch": "batch",
    "bio": "bio",
    "total": "total",
    "x-week MoA mAP": "map_cross_batch",
    "NSCB": "nscb",
    "fit": "fit",
}


class HarnessError(RuntimeError):
    """A failure with a message meant for the user."""


class NotAvailable(HarnessError):
    """A method whose software is not installed here (reported, not a failure)."""


# --------------------------------------------------------------------------
# Data and protocol preprocessing


def load_protocol_table(path: Path, batch_col: str, label_col: str, control: str):
    if not path.exists():
        raise HarnessError(f"input table {path} does not exist")
    raw = pd.read_csv(path)
    for col in (batch_col, label_col):
        if col not in raw.columns:
            raise HarnessError(f"{path}: no column '{col}'")
    meta_cols = [c for c in raw.columns if c.startswith(META_PREFIX)]
    numeric = [
        c
        for c in raw.columns
        if not c.startswith(META_PREFIX) and pd.api.types.is_numeric_dtype(raw[c])
    ]
    positional = [c for c in numeric if POSITIONAL.search(c)]
    candidates = [c for c in numeric if c not in positional]
    x = raw[candidates].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(x)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise HarnessError(
            f"{path}: non-finite value in feature '{candidates[c]}' at data row {r + 1}"
        )
    med = np.median(x, axis=0)
    mad = np.median(np.abs(x - med), axis=0)
    keep = mad > 0
    features = [c for c, k in zip(candidates, keep) if k]
    scaled = np.clip((x[:, keep] - med[keep]) / mad[keep], -50.0, 50.0)
    is_control = (raw[label_col].astype(str) == control).to_numpy()
    if not is_control.any():
        raise HarnessError(f"{path}: no row has {label_col} = {control}")
    info = {
        "rows": int(len(raw)),
        "treated_rows": int((~is_control).sum()),
        "control_rows": int(is_control.sum()),
        "batches": int(raw[batch_col].nunique()),
        "positional_dropped": len(positional),
        "zero_mad_dropped": int((~keep).sum()),
        "features_kept": len(features),
    }
    return raw, raw[meta_cols].copy(), features, scaled, is_control, info


def feature_frame(meta: pd.DataFrame, values: np.ndarray, names: list[str]) -> pd.DataFrame:
    if values.shape != (len(meta), len(names)):
        raise HarnessError(
            f"output has shape {values.shape}, expected {(len(meta), len(names))}"
        )
    if not np.isfinite(values).all():
        raise HarnessError("output has non-finite values")
    feats = pd.DataFrame(values, columns=names, index=meta.index)
    return pd.concat([meta.reset_index(drop=True), feats.reset_index(drop=True)], axis=1)


def pc_names(d: int) -> list[str]:
    return [f"PC_{i + 1:02d}" for i in range(d)]


def pca50(scaled: np.ndarray, n: int = 50) -> np.ndarray:
    """PCA scores of the scaled table (fitted on all wells, as the methods see them)."""
    from sklearn.decomposition import PCA

    return PCA(n_components=n, svd_solver="full").fit_transform(scaled)


def robust_scale(x: np.ndarray) -> np.ndarray:
    """`balans evaluate`'s robust scaling: global median / MAD, zero-MAD dropped, clip +-50."""
    med = np.median(x, axis=0)
    mad = np.median(np.abs(x - med), axis=0)
    keep = mad > 0
    return np.clip((x[:, keep] - med[keep]) / mad[keep], -50.0, 50.0)


def kmeans_spread(values: np.ndarray, kind: str, ctx, n_seeds: int = 10) -> dict:
    """NMI / ARI range of k-means over seeds in the space `balans evaluate` clusters.

    Diagnostic only (scikit-learn KMeans, one k-means++ start per seed, k = number
    of labels, on the evaluate embedding rebuilt here): shows how much of an
    NMI/ARI deviation a different k-means start alone can explain.
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    treated = ~ctx["is_control"]
    x = robust_scale(values) if kind == "raw-units" else values
    xt = x[treated]
    emb = xt if kind == "embedding" else PCA(n_components=50, svd_solver="full").fit_transform(xt)
    y = ctx["labels"][treated]
    k = len(np.unique(y))
    nmis, aris = [], []
    for s in range(n_seeds):
        cl = KMeans(n_clusters=k, n_init=1, random_state=s).fit_predict(emb)
        nmis.append(normalized_mutual_info_score(y, cl))
        aris.append(adjusted_rand_score(y, cl))
    return {"seeds": n_seeds, "nmi_min": min(nmis), "nmi_max": max(nmis),
            "ari_min": min(aris), "ari_max": max(aris)}


# --------------------------------------------------------------------------
# Methods: each returns (values, column names, kind, fit seconds)


def m_none(ctx):
    return ctx["scaled"], ctx["features"], "features", None


def m_dmso_centre(ctx):
    x, batch, ctrl = ctx["scaled"], ctx["batch"], ctx["is_control"]
    t = time.perf_counter()
    out = x.copy()
    for b in np.unique(batch):
        rows = batch == b
        c = rows & ctrl
        if not c.any():
            raise HarnessError(f"batch '{b}' has no control wells to centre on")
        out[rows] -= np.median(x[c], axis=0)
    return out, ctx["features"], "features", time.perf_counter() - t


def m_combat(ctx):
    import anndata
    import scanpy as sc

    obs = pd.DataFrame({"batch": pd.Categorical(ctx["batch"].astype(str))})
    obs.index = obs.index.astype(str)
    ad = anndata.AnnData(X=ctx["scaled"].copy(), obs=obs)
    t = time.perf_counter()
    out = sc.pp.combat(ad, key="batch", inplace=False)
    secs = time.perf_counter() - t
    return np.asarray(out, dtype=np.float64), ctx["features"], "features", secs


def m_sphering(ctx):
    from pycytominer import normalize

    feats = ctx["features"]
    df = feature_frame(ctx["meta"], ctx["scaled"], feats)
    label, control = ctx["label_col"], ctx["control"]
    t = time.perf_counter()
    out = normalize(
        profiles=df,
        features=feats,
        meta_features=list(ctx["meta"].columns),
        samples=f"{label} == '{control}'",
        method="spherize",
        spherize_epsilon=ctx["sphere_eps"],
    )
    secs = time.perf_counter() - t
    missing = [c for c in feats if c not in out.columns]
    if missing:
        raise HarnessError(f"pycytominer spherize dropped {len(missing)} features, e.g. {missing[0]}")
    return out[feats].to_numpy(np.float64), feats, "features", secs


def m_harmony(ctx):
    import harmonypy

    pcs = ctx["pca"]
    meta = pd.DataFrame({"batch": ctx["batch"].astype(str)})
    t = time.perf_counter()
    ho = harmonypy.run_harmony(pcs, meta, ["batch"], random_state=ctx["seed"], verbose=False)
    secs = time.perf_counter() - t
    z = np.asarray(ho.Z_corr, dtype=np.float64)
    if z.shape == pcs.shape[::-1]:
        z = z.T
    return z, pc_names(z.shape[1]), "embedding", secs


def m_scanorama(ctx):
    """What `scanpy.external.pp.scanorama_integrate(adata, key, basis="X_pca")`
    does: `scanorama.assemble` on each week's rows of the PCA-50 (knn 20,
    sigma 15, alpha 0.1, approximate matching, batch_size 5000). A variant
    study (scanorama.integrate / correct on features, dimred 50 / 100, per
    plate) put this call about twice as close to evaluation.md as any other;
    its batch metrics still swing with annoy's matches (see docs/anchors.md)."""
    import scanorama

    pcs, batch = ctx["pca"], ctx["batch"]
    levels = list(dict.fromkeys(batch))
    idx = [np.flatnonzero(batch == b) for b in levels]
    datasets = [np.ascontiguousarray(pcs[i]) for i in idx]
    t = time.perf_counter()
    integrated = scanorama.assemble(datasets, knn=20, sigma=15, approx=True, alpha=0.10,
                                    batch_size=5000, ds_names=levels, verbose=0)
    secs = time.perf_counter() - t
    out = np.zeros((pcs.shape[0], integrated[0].shape[1]))
    for i, z in zip(idx, integrated):
        out[i] = z
    return out, pc_names(out.shape[1]), "embedding", secs


SEURAT_R = r"""
args <- commandArgs(trailingOnly = TRUE)
suppressPackageStartupMessages(library(Seurat))
x <- read.csv(args[1], check.names = FALSE)
batch <- as.character(read.csv(args[2], colClasses = "character")[[1]])
m <- t(as.matrix(x))
feat <- rownames(m)
rownames(m) <- sprintf("f%04d", seq_len(nrow(m)))
colnames(m) <- sprintf("w%04d", seq_len(ncol(m)))
t0 <- Sys.time()
obj <- CreateSeuratObject(counts = m, meta.data = data.frame(batch = batch, row.names = colnames(m)))
objs <- SplitObject(obj, split.by = "batch")
minb <- min(sapply(objs, ncol))
npc <- min(30, minb - 1)
objs <- lapply(objs, function(o) {
  o <- SetAssayData(o, slot = "data", new.data = GetAssayData(o, slot = "counts"))
  o <- ScaleData(o, features = rownames(m), verbose = FALSE)
  RunPCA(o, features = rownames(m), npcs = npc, verbose = FALSE)
})
anchors <- FindIntegrationAnchors(objs, anchor.features = rownames(m), reduction = "rpca",
                                  dims = 1:npc, k.filter = NA, k.score = min(30, minb - 1),
                                  verbose = FALSE)
# k.weight (default 100) must not exceed the anchors available per integration
# step; with 39-123 wells per week, halve it until IntegrateData accepts it.
integ <- NULL
kw <- min(100, minb - 1)
while (is.null(integ) && kw >= 5) {
  integ <- tryCatch(
    IntegrateData(anchors, features.to.integrate = rownames(m), dims = 1:npc,
                  k.weight = kw, verbose = FALSE),
    error = function(e) { message("IntegrateData failed with k.weight = ", kw, ": ", conditionMessage(e)); NULL })
  if (is.null(integ)) kw <- floor(kw / 2)
}
if (is.null(integ)) stop("IntegrateData failed for every k.weight down to 5")
secs <- as.numeric(difftime(Sys.time(), t0, units = "secs"))
writeLines(sprintf("npcs=%d k.weight=%d k.score=%d anchors=%d", npc, kw, min(30, minb - 1),
                   nrow(slot(anchors, "anchors"))), args[5])
out <- as.matrix(GetAssayData(integ, assay = "integrated", slot = "data"))
out <- out[rownames(m), colnames(m)]
rownames(out) <- feat
write.csv(t(out), args[3], row.names = FALSE)
writeLines(sprintf("%.6f", secs), args[4])
"""


def seurat_available() -> tuple[bool, str]:
    rscript = shutil.which("Rscript")
    if rscript is None:
        return False, "Rscript not installed (Debian r-cran-seurat is not on this machine)"
    r = subprocess.run(
        [rscript, "-e", "suppressPackageStartupMessages(library(Seurat)); cat(as.character(packageVersion('Seurat')))"],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        return False, "R is installed but the Seurat package is not: " + r.stderr.strip()[-300:]
    return True, r.stdout.strip()


def m_seurat(ctx):
    ok, why = seurat_available()
    if not ok:
        raise NotAvailable(why)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        pd.DataFrame(ctx["scaled"], columns=ctx["features"]).to_csv(d / "x.csv", index=False)
        pd.DataFrame({"batch": ctx["batch"].astype(str)}).to_csv(d / "b.csv", index=False)
        (d / "s.R").write_text(SEURAT_R)
        r = subprocess.run(
            ["Rscript", str(d / "s.R"), str(d / "x.csv"), str(d / "b.csv"), str(d / "o.csv"), str(d / "t.txt"),
             str(d / "p.txt")],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            err = r.stderr
            cut = err.find("Error")
            raise HarnessError("Seurat RPCA failed: " + (err[cut:] if cut >= 0 else err).strip()[:600])
        out = pd.read_csv(d / "o.csv")
        secs = float((d / "t.txt").read_text().strip())
        ctx["seurat_params"] = (d / "p.txt").read_text().strip()
    if list(out.columns) != list(ctx["features"]):
        raise HarnessError("Seurat output columns differ from the input features")
    return out.to_numpy(np.float64), ctx["features"], "features", secs


def m_balans(ctx):
    out_raw = ctx["out"] / "balans_raw.parquet"
    cmd = [
        str(ctx["balans"]), "correct", "-q",
        "--input", str(ctx["data"]),
        "--output", str(out_raw),
        "--batch-col", ctx["batch_col"],
        "--control", f"{ctx['label_col']}={ctx['control']}",
        "--exclude", BALANS_EXCLUDE,
    ]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    secs = time.perf_counter() - t
    if r.returncode != 0:
        raise HarnessError(f"balans correct exited {r.returncode}: {r.stderr.strip()[-600:] or '(no stderr)'}")
    df = pd.read_parquet(out_raw)
    missing = [c for c in ctx["features"] if c not in df.columns]
    if missing:
        raise HarnessError(f"balans output lacks {len(missing)} features, e.g. {missing[0]}")
    out_raw.unlink()
    return df[ctx["features"]].to_numpy(np.float64), ctx["features"], "raw-units", secs


# Share of the batches the daemon is warm-started on: BBBC021's 3 of 10 weeks,
# the semi-synthetic sets' 1 of 4 batches.
STREAM_REFERENCE_SHARE = 0.3

# Splits of the streamed row (method `balans_stream@NAME`; plain `balans_stream`
# is `early`): which batches warm-start the daemon (k = round(0.3 n) of n, at
# least 1) and in which order the other batches' plates arrive (within a batch
# in plate-name order unless the split says otherwise). Deterministic; only
# `shuffled` uses the seed (--seed).
STREAM_SPLITS = {
    "early": "the first k batches in natural order (BBBC021: weeks 1-3; semi-synthetic: B1); "
             "the others streamed in batch order",
    "late": "the last k batches (BBBC021: weeks 8-10; semi-synthetic: B4); the others streamed "
            "newest first (weeks 7, 6, ..., 1)",
    "spread": "k batches spread over the natural order, index floor((i + 1/2) n / k) for i < k "
              "(BBBC021: weeks 2, 6, 9; semi-synthetic: B3); the others streamed in batch order",
    "shuffled": "k batches drawn at random (seeded); the other batches' plates streamed in a "
                "seeded random order, so weeks arrive interleaved",
    "cold": "no reference (cold start): the first plate fixes the normalisation and the basis; "
            "every plate streamed in batch order",
}


def natural_key(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def stream_plan(plates: list[tuple[str, str]], split: str, seed: int = 0) -> tuple[list[str], list[tuple[str, str]]]:
    """(reference batches, streamed (batch, plate) pairs in arrival order) of a split.

    `plates` lists the table's (batch, plate) pairs (duplicates ignored)."""
    if split not in STREAM_SPLITS:
        raise HarnessError(f"unknown stream split '{split}' (known: {', '.join(STREAM_SPLITS)})")
    pairs = sorted(set(plates), key=lambda bp: (natural_key(bp[0]), bp[1]))
    order = sorted({b for b, _ in pairs}, key=natural_key)
    n = len(order)
    k = max(1, round(STREAM_REFERENCE_SHARE * n))
    if k >= n:
        raise HarnessError(f"{n} batch(es): nothing left to stream after a reference of {k}")
    rng = np.random.default_rng(seed)
    if split == "cold":
        return [], pairs
    if split == "early":
        ref = order[:k]
    elif split == "late":
        ref = order[n - k:]
    elif split == "spread":
        ref = [order[int((i + 0.5) * n / k)] for i in range(k)]
    else:  # shuffled
        ref = [order[i] for i in sorted(rng.choice(n, size=k, replace=False))]
    rank = {b: i for i, b in enumerate(order)}
    rest = [bp for bp in pairs if bp[0] not in set(ref)]
    if split == "late":
        rest.sort(key=lambda bp: (-rank[bp[0]], bp[1]))
    elif split == "shuffled":
        rest = [rest[i] for i in rng.permutation(len(rest))]
    return ref, rest


def m_balans_stream(ctx, split: str = "early"):
    """The daemon's inductive correction: plates arrive one at a time and
    published rows never move, so each plate is aligned only to what came
    before it. `split` (STREAM_SPLITS) chooses the warm-start batches and the
    arrival order."""
    d = ctx["out"] / ("balans_stream" if split == "early" else f"balans_stream_{split}")
    if d.exists():
        shutil.rmtree(d)
    inbox = d / "inbox"
    inbox.mkdir(parents=True)
    raw = pd.read_csv(ctx["data"])
    raw = raw.assign(Metadata_RowId=np.arange(len(raw)))
    batch_col, plate_col = ctx["batch_col"], "Metadata_Plate"
    if plate_col not in raw.columns:
        raise HarnessError(f"{ctx['data']}: no column '{plate_col}' (the streamed row sends one file per plate)")
    bcol, pcol = raw[batch_col].astype(str), raw[plate_col].astype(str)
    ref_batches, arrivals = stream_plan(list(zip(bcol, pcol)), split, ctx.get("seed", 0))
    ctx.setdefault("stream_plans", {})[split] = {
        "reference_batches": ref_batches, "arrival_order": [p for _, p in arrivals]}
    is_ref = bcol.isin(set(ref_batches))
    if ref_batches:
        raw[is_ref].to_parquet(d / "reference.parquet", index=False)
    # The daemon takes files in name order (the plate id comes from the plate
    # column), but only files at least `[serve] settle_ms` old: a file written
    # just before the run would wait for a later scan, behind later names that
    # had settled, and the arrival order would depend on timing. (Before the
    # splits, BBBC021's Week10 plates were written first and so were sometimes
    # streamed first: the row's total moved between 0.623 and 0.634.) Every
    # plate file is dated an hour back, so the first scan takes them all, in
    # name order.
    past = time.time() - 3600
    for seq, (b, p) in enumerate(arrivals):
        f = inbox / f"{seq:04d}.parquet"
        raw[(bcol == b) & (pcol == p)].to_parquet(f, index=False)
        os.utime(f, (past, past))
    common = [
        "--batch-col", batch_col,
        "--control", f"{ctx['label_col']}={ctx['control']}",
        "--exclude", BALANS_EXCLUDE,
    ]
    t = time.perf_counter()
    reference = ["--reference", str(d / "reference.parquet")] if ref_batches else []
    r = subprocess.run(
        [str(ctx["balans"]), "serve", *reference, *common,
         "--state-dir", str(d / "state"), "--inbox", str(inbox), "--outbox", str(d / "outbox"), "--once"],
        capture_output=True, text=True,
    )
    secs = time.perf_counter() - t
    if r.returncode != 0:
        raise HarnessError(f"balans serve exited {r.returncode}: {r.stderr.strip()[-600:] or '(no stderr)'}")
    dlq = sorted((inbox / "dlq").glob("*.reason.txt")) if (inbox / "dlq").exists() else []
    if dlq:
        raise HarnessError(f"balans serve dead-lettered {len(dlq)} plate(s): {dlq[0].read_text().strip()[:300]}")
    # Per-plate QC in arrival order (mixing after correction): how the
    # first plates fare against later ones (the cold start's question).
    by_plate = {}
    for f in (d / "outbox").glob("*.qc.json"):
        rec = json.loads(f.read_text())
        by_plate[str(rec.get("plate"))] = (rec.get("qc") or {}).get("mixing_after")
    qc = [by_plate.get(p) for _, p in arrivals]
    ctx.setdefault("stream_qc", {})[split] = qc
    parts = []
    if ref_batches:
        r = subprocess.run(
            [str(ctx["balans"]), "correct", "-q", "--input", str(d / "reference.parquet"),
             "--output", str(d / "reference_corrected.parquet"), *common],
            capture_output=True, text=True,
        )
        if r.returncode != 0:
            raise HarnessError(f"balans correct (reference) exited {r.returncode}: {r.stderr.strip()[-600:]}")
        parts.append(pd.read_parquet(d / "reference_corrected.parquet"))
    parts += [pd.read_parquet(f) for f in sorted((d / "outbox").glob("*.parquet"))]
    df = pd.concat(parts, ignore_index=True).sort_values("Metadata_RowId")
    if len(df) != len(raw) or not (df["Metadata_RowId"].to_numpy() == np.arange(len(raw))).all():
        raise HarnessError(f"streamed output has {len(df)} rows for {len(raw)} input rows")
    missing = [c for c in ctx["features"] if c not in df.columns]
    if missing:
        raise HarnessError(f"streamed output lacks {len(missing)} features, e.g. {missing[0]}")
    shutil.rmtree(d)
    return df[ctx["features"]].to_numpy(np.float64), ctx["features"], "raw-units", secs


METHODS = [
    ("none (scaled)", "none", m_none),
    ("DMSO-centre per week", "dmso_centre", m_dmso_centre),
    ("ComBat (scanpy)", "combat", m_combat),
    ("sphering (DMSO, eps 1e-2)", "sphering", m_sphering),
    ("Harmony (PCA-50)", "harmony", m_harmony),
    ("Scanorama", "scanorama", m_scanorama),
    ("Seurat RPCA", "seurat_rpca", m_seurat),
    ("balans", "balans", m_balans),
    ("balans, streamed (serve)", "balans_stream", m_balans_stream),
]


def method_plan(wanted: list[str]) -> list[tuple[str, str, object]]:
    """(name, slug, function) of the wanted methods, in METHODS order; a
    `balans_stream@SPLIT` entry (STREAM_SPLITS) is a streamed row with that
    split, placed after the plain streamed row."""
    known = {s for _, s, _ in METHODS}
    extra = []
    for w in wanted:
        if w in known:
            continue
        base, _, split = w.partition("@")
        if base != "balans_stream" or split not in STREAM_SPLITS:
            raise HarnessError(f"unknown method '{w}' (known: {', '.join(sorted(known))}, "
                               f"balans_stream@SPLIT with SPLIT one of {', '.join(STREAM_SPLITS)})")
        extra.append((f"balans, streamed (serve, split {split})", w,
                      lambda ctx, split=split: m_balans_stream(ctx, split)))
    plan = [(n, s, f) for n, s, f in METHODS if s in wanted]
    return plan + extra


# --------------------------------------------------------------------------
# Scoring


def evaluate(ctx, table: Path, baseline: Path, extra: list[str], json_path: Path) -> dict:
    cmd = [
        str(ctx["balans"]), "evaluate", "-q",
        "--input", str(table),
        "--baseline", str(baseline),
        "--batch-col", ctx["batch_col"],
        "--label-col", ctx["label_col"],
        "--control", f"{ctx['label_col']}={ctx['control']}",
        "--seed", str(ctx["seed"]),
        "--json", str(json_path),
        *ctx.get("evaluate_args", []),
        *extra,
    ]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise HarnessError(f"balans evaluate exited {r.returncode}: {r.stderr.strip()[-600:] or '(no stderr)'}")
    rep = json.loads(json_path.read_text())
    rep["evaluate_args"] = extra
    return rep


# --------------------------------------------------------------------------
# Reference numbers (evaluation.md)


def parse_reference(path: Path) -> dict[str, dict[str, float | str]]:
    """Rows of evaluation.md's BBBC021 table, keyed by method name."""
    lines = path.read_text().splitlines()
    start = next(
        (i for i, l in enumerate(lines) if l.startswith("| method |") and "NMI" in l and "kBET" in l),
        None,
    )
    if start is None:
        raise HarnessError(f"{path}: no BBBC021 results table ('| method | NMI ... kBET ...') found")
    headers = [h.strip().strip("*").strip() for h in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip().strip("*").strip() for c in line.strip().strip("|").split("|")]
        row = {}
        for h, c in zip(headers[1:], cells[1:]):
            key = REFERENCE_HEADERS.get(h)
            if key is None:
                continue
            if key == "fit":
                row[key] = c
                continue
            try:
                row[key] = float(c)
            except ValueError:
                pass
        rows[cells[0]] = row
    if not rows:
        raise HarnessError(f"{path}: the BBBC021 results table has no rows")
    return rows


# --------------------------------------------------------------------------
# Reporting


def fmt(v, nd=3):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:.{nd}f}"


def fmt_secs(s):
    if s is None:
        return "—"
    return f"{s:.3f} s" if s < 1 else f"{s:.2f} s"


def render_markdown(results, info, reference, ref_path, tol, env, seurat_note) -> str:
    out = []
    out.append("# Anchors on BBBC021: the published methods re-run beside balans\n")
    out.append(
        "Generated by `bash benches/anchors/run.sh` (script `benches/anchors/run_anchors.py`); "
        "do not edit by hand. Machine-readable: `docs/anchors.json`.\n"
    )
    out.append("## Protocol\n")
    out.append(
        f"Bundled BBBC021 (`data/bbbc021/bbbc021_wells_annotated.csv.gz`): {info['rows']} wells, "
        f"{info['batches']} weeks; {info['positional_dropped']} positional columns "
        f"(`*_AreaShape_Center_*`, `*_Location_*`) and {info['zero_mad_dropped']} zero-MAD features "
        f"dropped, {info['features_kept']} features left; robust global scaling (median / MAD over all "
        "wells, clip +-50). Batch = `Metadata_Week`, label = `Metadata_MoA`, controls = DMSO "
        f"(metrics on the {info['treated_rows']} treated wells). Every output is scored by "
        "`balans evaluate --json` (PCA-50, batch = mean(BRAS, iLISI, kBET, graph conn., PCR cmp.), "
        "bio = mean(NMI, ARI, sil. label, cLISI), total = 0.4 batch + 0.6 bio; x-batch mAP = "
        "positives same MoA in another week and another compound; NSCB on treatment medians).\n"
    )
    out.append(
        "- Feature outputs of the Python anchors are already in the scaled space: "
        "`--no-robust-scale` (evaluate fits PCA-50 on the treated wells), baseline = the none (scaled) table.\n"
        "- Embedding outputs (Harmony, Scanorama: `PC_01..PC_50`) are the metric space itself: "
        "`--pca 0 --no-robust-scale`, baseline = the PCA-50 embedding of the scaled table "
        "(`none_pca50.parquet`, Harmony's input). `balans evaluate` matches baseline features by "
        "name, so the baseline carries the same `PC_` columns. Retrieval metrics (x-batch mAP, NSCB) "
        "are then computed on the embedding, as they can only be for these methods. The row "
        "\"none (PCA-50 embedding)\" scores the uncorrected embedding this way, as a check of the "
        "embedding path against \"none (scaled)\".\n"
        "- balans' output is in the raw units of its input, so it is scored with evaluate's robust "
        "scaling (the protocol's own step; the identity on an already scaled table), baseline = "
        "the none (scaled) table. Its fit time is the whole CLI wall time (read, correct, write).\n"
        "- balans, streamed: `balans serve` (directory mode, `--once`) warm-started on the first 30% of the "
        "batches in natural order (BBBC021: weeks 1-3; the offline fit), then fed the other batches as one "
        "file per plate in batch order; each plate is "
        "aligned once against the rows published before it. Scored on the reference fit's rows "
        "(`balans correct` on those weeks, the fit the daemon starts from) plus the published plates, "
        "like balans; its time is the whole serve run.\n"
        "- Fit seconds are wall seconds of the fit call only (Python anchors), measured on this "
        "2-core machine shared with other jobs: read them as orders of magnitude.\n"
        "- DMSO-centre subtracts each week's DMSO median; ComBat is `scanpy.pp.combat`; sphering is "
        "`pycytominer.normalize(method=\"spherize\", spherize_method=\"ZCA-cor\")` fitted on the DMSO "
        f"wells with eps = {env['sphere_eps']:g}; Harmony is `harmonypy.run_harmony` on the PCA-50 "
        "(defaults, random_state = seed); Scanorama is `scanorama.assemble` on each week's rows of "
        "the PCA-50, as `scanpy.external.pp.scanorama_integrate(basis=\"X_pca\")` runs it (a variant study "
        "found it twice as close to evaluation.md as `scanorama.integrate` / `correct` on features).\n"
        "- NMI / ARI: scib-metrics runs one k-means++ start (JAX seed 0), `balans evaluate` five restarts "
        "from a fixed seed; re-scoring the same outputs with scib's own k-means reproduces evaluation.md's "
        "NMI / ARI for sphering (0.769 / 0.608 vs 0.764 / 0.604), ComBat (0.669 / 0.476 vs 0.671 / 0.473) "
        "and DMSO-centre (0.702 / 0.521, equal), so those deviations are the scorer's k-means optimum, not "
        "the method runs. Sphering's remaining PCR-comparison gap (+0.075) is unexplained (scib's "
        "pcr_comparison gives the same 0.099 on this output).\n"
        "- evaluation.md scored with scib-metrics / copairs (pynndescent graphs, their k-means); here "
        "every output is scored by `balans evaluate` (the Rust re-implementation), so a deviation mixes "
        "differences in how a method was run with differences between metric implementations. The "
        "none (scaled) row isolates the latter on the uncorrected table. evaluation.md does not state "
        "the Scanorama call (integrate vs correct, features vs PCA input), the DMSO-centre statistic, "
        "the Seurat k parameters or its k-means starts; the choices made here are the ones above.\n"
    )
    out.append("## Results\n")
    heads = ["method"] + [h for h, _ in METRICS] + ["fit", "status"]
    out.append("| " + " | ".join(heads) + " |")
    out.append("|" + "---|" * len(heads))
    for r in results:
        rep = r.get("report") or {}
        if r["status"] == "ok":
            cells = [fmt(rep.get(k)) for _, k in METRICS]
            status = "ok"
        elif r["status"] == "not available":
            cells = ["—"] * len(METRICS)
            status = f"NOT AVAILABLE: {r['error']}".replace("|", "/").replace("\n", " ")
        else:
            cells = ["—"] * len(METRICS)
            status = f"FAILED: {r['error']}".replace("|", "/").replace("\n", " ")
        out.append(
            "| " + " | ".join([r["method"]] + cells + [fmt_secs(r.get("fit_seconds")), status]) + " |"
        )
    out.append("")
    for r in results:
        if r.get("params"):
            out.append(f"- {r['method']} parameters used: {r['params']} (Seurat 4 defaults otherwise; k.weight "
                       "halved from min(100, smallest week - 1) until IntegrateData accepts it, k.filter off).")
    if seurat_note:
        out.append(f"- {seurat_note}")
    out.append(
        "- `none (PCA-50 embedding)` is a check row, not a method: the uncorrected PCA-50 (fitted on all "
        "wells) scored on the embedding path. It should match `none (scaled)` except where the PCA "
        "fit rows (all vs treated wells) or k-means starts differ."
    )
    out.append("")
    out.append("## Reproduction of evaluation.md\n")
    if reference is None:
        out.append(f"Reference table not available ({ref_path}): no comparison made.\n")
    else:
        out.append(
            f"Reference: `{ref_path}` (BBBC021 table). Tolerance {tol:g} per metric, {KBET_TOLERANCE:g} for kBET (one label's weight; docs/metrics.md shows scib's own kBET moving that much under 0.1 % noise) (k-means NMI/ARI "
            "alone move by about +-0.02 between seeds). Deviation = this run - evaluation.md.\n"
        )
        out.append(
            "The k-means columns give the NMI / ARI range over 10 scikit-learn k-means starts in the "
            "same embedding (diagnostic; `balans evaluate` itself runs 5 k-means++ restarts from a "
            "fixed seed), and whether evaluation.md's value lies in that range (+- tolerance).\n"
        )
        out.append("| method | metrics compared | outside tolerance | largest deviation | reproduced "
                   "| k-means NMI range | k-means ARI range | ref NMI / ARI in range |")
        out.append("|---|---|---|---|---|---|---|---|")
        for r in results:
            c = r.get("comparison")
            if c is None:
                continue
            if c.get("error"):
                out.append(f"| {r['method']} | — | — | — | {c['error']} |")
                continue
            big = c["largest"]
            sp = r.get("kmeans_spread")
            yn = {True: "yes", False: "no", None: "—"}
            out.append(
                f"| {r['method']} | {c['n_compared']} | "
                f"{', '.join(c['outside']) if c['outside'] else 'none'} | "
                f"{big['metric']} {big['deviation']:+.3f} ({fmt(big['ours'])} vs {fmt(big['reference'])}) | "
                f"{'yes' if c['reproduced'] else 'no'} | "
                + (f"{sp['nmi_min']:.3f}-{sp['nmi_max']:.3f} | {sp['ari_min']:.3f}-{sp['ari_max']:.3f} | "
                   if sp else "— | — | ")
                + f"{yn[c.get('reference_nmi_in_kmeans_range')]} / {yn[c.get('reference_ari_in_kmeans_range')]} |"
            )
        out.append("")
        compared = [r["comparison"] for r in results
                    if r.get("comparison") and not r["comparison"].get("error") and not r.get("check_row")]
        counts = {h: sum(h in c["outside"] for c in compared) for h, _ in METRICS}
        worst = sorted(((n, h) for h, n in counts.items() if n), reverse=True)
        n_rep = sum(c["reproduced"] for c in compared)
        out.append(
            f"Reproduced within {tol:g} on every metric: {n_rep} of {len(compared)} methods. Metrics "
            "outside tolerance, by number of methods: "
            + (", ".join(f"{h} {n}" for n, h in worst) if worst else "none")
            + ".\n"
        )
        out.append("Per-metric deviations (this run - evaluation.md):\n")
        heads = ["method"] + [h for h, k in METRICS]
        out.append("| " + " | ".join(heads) + " |")
        out.append("|" + "---|" * len(heads))
        for r in results:
            c = r.get("comparison")
            if not c or c.get("error"):
                continue
            cells = []
            for _, k in METRICS:
                d = c["deviations"].get(k)
                cells.append("—" if d is None else f"{d:+.3f}")
            out.append("| " + " | ".join([r["method"]] + cells) + " |")
    out.append("")
    out.append("## Environment\n")
    for k, v in env.items():
        out.append(f"- {k}: {v}")
    out.append("")
    return "\n".join(out)


KBET_TOLERANCE = 0.1


def compare(rep: dict, ref: dict, tol: float, rep_spread: dict | None = None) -> dict:
    devs = {}
    for _, k in METRICS:
        if k in ref and rep.get(k) is not None:
            devs[k] = float(rep[k]) - float(ref[k])
    if not devs:
        return {"error": "no metric in common with the reference row"}
    label = {k: h for h, k in METRICS}
    kmax = max(devs, key=lambda k: abs(devs[k]))
    # kBET flips a whole label's weight (1 / scored labels = 0.1 on BBBC021)
    # under last-bit perturbations of scib itself: see docs/metrics.md.
    outside = [label[k] for k, d in devs.items() if abs(d) > (max(tol, KBET_TOLERANCE) if k == "kbet" else tol)]
    res = {
        "n_compared": len(devs),
        "deviations": devs,
        "outside": outside,
        "largest": {
            "metric": label[kmax],
            "deviation": devs[kmax],
            "ours": rep.get(kmax),
            "reference": ref[kmax],
        },
        "reproduced": not outside,
        "reference_fit": ref.get("fit"),
    }
    sp = rep_spread
    if sp and "nmi" in ref and "ari" in ref:
        res["reference_nmi_in_kmeans_range"] = sp["nmi_min"] - tol <= ref["nmi"] <= sp["nmi_max"] + tol
        res["reference_ari_in_kmeans_range"] = sp["ari_min"] - tol <= ref["ari"] <= sp["ari_max"] + tol
    return res


def versions() -> dict:
    v = {}
    for p in ["numpy", "pandas", "pyarrow", "scikit-learn", "scanpy", "anndata", "harmonypy",
              "scanorama", "pycytominer"]:
        try:
            v[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            v[p] = "not installed"
    return v


# --------------------------------------------------------------------------


def find_balans(given: Path | None) -> Path:
    """The balans binary: `given`, else $BALANS_BIN, else target/release, else target/debug."""
    balans = given or (Path(os.environ["BALANS_BIN"]) if os.environ.get("BALANS_BIN") else None)
    if balans is None:
        for cand in (REPO / "target/release/balans", REPO / "target/debug/balans"):
            if cand.exists():
                balans = cand
                break
    if balans is None or not Path(balans).exists():
        raise HarnessError("no balans binary: build it (`cargo build --release`) or pass --balans / BALANS_BIN")
    return Path(balans)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO / "data/bbbc021/bbbc021_wells_annotated.csv.gz")
    ap.add_argument("--out", type=Path, default=REPO / "out/anchors", help="corrected tables (default out/anchors)")
    ap.add_argument("--docs", type=Path, default=REPO / "docs", help="where anchors.md/json go")
    ap.add_argument("--balans", type=Path, default=None,
                    help="balans binary (default: $BALANS_BIN, else target/release or target/debug)")
    ap.add_argument("--reference", type=Path, default=REPO.parent / "shared/research/evaluation.md",
                    help="evaluation.md with the numbers to reproduce")
    ap.add_argument("--batch-col", default="Metadata_Week")
    ap.add_argument("--label-col", default="Metadata_MoA")
    ap.add_argument("--control", default="DMSO", help="value of --label-col marking controls")
    ap.add_argument("--sphere-eps", type=float, default=1e-2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tolerance", type=float, default=0.03)
    ap.add_argument("--evaluate-arg", action="append", default=[],
                    help="extra argument for every `balans evaluate` call (repeatable), e.g. --evaluate-arg=--compound-col=X")
    ap.add_argument("--methods", default="all", help="comma-separated subset of: " +
                    ",".join(s for _, s, _ in METHODS) + "; also balans_stream@SPLIT, the streamed row "
                    "with another split (SPLIT: " + ", ".join(STREAM_SPLITS) + "; plain balans_stream = early)")
    a = ap.parse_args(argv)

    balans = find_balans(a.balans)

    wanted = [s for _, s, _ in METHODS] if a.methods == "all" else a.methods.split(",")
    if "none" not in wanted:
        wanted.insert(0, "none")  # the baseline of every score
    plan = method_plan(wanted)

    a.out.mkdir(parents=True, exist_ok=True)
    raw, meta, features, scaled, is_control, info = load_protocol_table(
        a.data, a.batch_col, a.label_col, a.control
    )
    print(
        f"[anchors] {info['rows']} wells, {info['batches']} batches, {info['features_kept']} features "
        f"({info['positional_dropped']} positional + {info['zero_mad_dropped']} zero-MAD dropped)",
        flush=True,
    )
    ctx = {
        "data": a.data, "out": a.out, "balans": balans, "meta": meta, "features": features,
        "scaled": scaled, "is_control": is_control, "batch": raw[a.batch_col].astype(str).to_numpy(),
        "labels": raw[a.label_col].astype(str).to_numpy(),
        "batch_col": a.batch_col, "label_col": a.label_col, "control": a.control,
        "sphere_eps": a.sphere_eps, "seed": a.seed, "evaluate_args": list(a.evaluate_arg),
    }
    ctx["pca"] = pca50(scaled)
    base_feat = a.out / "none.parquet"
    base_emb = a.out / "none_pca50.parquet"
    feature_frame(meta, ctx["pca"], pc_names(ctx["pca"].shape[1])).to_parquet(base_emb, index=False)

    reference, ref_error = None, None
    try:
        reference = parse_reference(a.reference)
    except (OSError, HarnessError) as e:
        ref_error = str(e)
        print(f"[anchors] WARNING: no reference comparison: {e}", file=sys.stderr)

    results = []
    # The embedding-path check row goes right after none (scaled).
    for name, slug, fn in plan:
        rec = {"method": name, "slug": slug}
        print(f"[anchors] {name} ...", flush=True)
        try:
            values, names, kind, secs = fn(ctx)
            rec.update(kind=kind, fit_seconds=secs)
            if "seurat_params" in ctx:
                rec["params"] = ctx.pop("seurat_params")
            if slug.startswith("balans_stream"):
                rec["stream_plan"] = ctx["stream_plans"][slug.partition("@")[2] or "early"]
            table = a.out / f"{slug}.parquet"
            feature_frame(meta, values, names).to_parquet(table, index=False)
            rec["table"] = str(table)
        except NotAvailable as e:  # reported in the table, not run
            rec.update(status="not available", error=str(e))
            print(f"[anchors]   NOT AVAILABLE: {e}", file=sys.stderr, flush=True)
            results.append(rec)
            continue
        except Exception as e:  # reported as a failed method, never skipped
            rec.update(status="failed", error=f"{type(e).__name__}: {e}".strip())
            if not isinstance(e, HarnessError):
                rec["traceback"] = traceback.format_exc()
            print(f"[anchors]   FAILED: {rec['error']}", file=sys.stderr, flush=True)
            results.append(rec)
            continue
        try:
            if kind == "embedding":
                extra, baseline = ["--pca", "0", "--no-robust-scale"], base_emb
            elif kind == "raw-units":
                extra, baseline = [], base_feat
            else:
                extra, baseline = ["--no-robust-scale"], base_feat
            rec["report"] = evaluate(ctx, table, baseline, extra, a.out / f"eval_{slug}.json")
            rec["baseline"] = str(baseline)
            rec["status"] = "ok"
            rec["kmeans_spread"] = kmeans_spread(values, kind, ctx)
        except Exception as e:
            rec.update(status="failed", error=f"scoring failed: {e}")
            print(f"[anchors]   FAILED: {rec['error']}", file=sys.stderr, flush=True)
        results.append(rec)
        if slug == "none":
            chk = {"method": "none (PCA-50 embedding)", "slug": "none_pca50", "kind": "embedding",
                   "fit_seconds": None, "table": str(base_emb), "check_row": True}
            try:
                chk["report"] = evaluate(ctx, base_emb, base_emb, ["--pca", "0", "--no-robust-scale"],
                                         a.out / "eval_none_pca50.json")
                chk["status"] = "ok"
                chk["kmeans_spread"] = kmeans_spread(ctx["pca"], "embedding", ctx)
            except Exception as e:
                chk.update(status="failed", error=f"scoring failed: {e}")
            results.append(chk)

    seurat_note = None
    for r in results:
        if reference is None:
            r["comparison"] = None
            continue
        ref = reference.get(r["method"])
        if r.get("check_row"):
            ref = reference.get("none (scaled)")
        if ref is None:
            r["comparison"] = None
        elif r["status"] != "ok":
            r["comparison"] = {"error": f"{r['status']}: not compared"}
        else:
            r["comparison"] = compare(r["report"], ref, a.tolerance, r.get("kmeans_spread"))
        if r["slug"] == "seurat_rpca" and r["status"] != "ok" and ref is not None:
            cells = ", ".join(f"{h} {fmt(ref[k])}" for h, k in METRICS if k in ref)
            seurat_note = (
                f"Seurat RPCA was not run here ({r['error']}). evaluation.md's figures, NOT reproduced by "
                f"this harness: {cells}, fit {ref.get('fit', '—')}. Install Debian's r-cran-seurat "
                "(`ANCHORS_INSTALL_SEURAT=1 bash benches/anchors/run.sh`) to run it."
            )
            r["reference_only"] = ref

    env = {
        "balans": f"{balans} ({subprocess.run([str(balans), '--version'], capture_output=True, text=True).stdout.strip()})",
        "python": platform.python_version(),
        **versions(),
        "seurat": seurat_available()[1],
        "sphere_eps": a.sphere_eps,
        "seed": a.seed,
        "cpus": os.cpu_count(),
    }
    if ref_error:
        env["reference"] = f"unavailable: {ref_error}"
    md = render_markdown(results, info, reference, a.reference.name if reference else a.reference,
                         a.tolerance, env, seurat_note)
    a.docs.mkdir(parents=True, exist_ok=True)
    (a.docs / "anchors.md").write_text(md)
    payload = {
        "protocol": info,
        "tolerance": a.tolerance,
        "reference": str(a.reference) if reference else None,
        "environment": env,
        "results": [{k: v for k, v in r.items() if k not in ("table", "baseline")} for r in results],
    }
    (a.docs / "anchors.json").write_text(json.dumps(payload, indent=2, default=float) + "\n")
    print(md)
    failed = [r["method"] for r in results if r["status"] == "failed"]
    if failed:
        print(f"[anchors] FAILED methods: {', '.join(failed)} (see the status column)", file=sys.stderr)
        return 1
    return 0


def cli(entry, name: str) -> None:
    """Run a harness entry point: its exit code, or 2 with a one-line message on a HarnessError."""
    try:
        sys.exit(entry())
    except HarnessError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli(main, "run_anchors")
