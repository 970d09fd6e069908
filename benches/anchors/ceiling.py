#!/usr/bin/env python3
"""Oracle ceiling on BBBC021: how high can the batch score go while the
biology is kept — with the answer key in hand?

Every row below *uses the true MoA labels*, which no correction has. They
bound what any label-free correction can reach on this metric set:

  per-plate DMSO normalisation   balans' preprocessing alone (= `--rounds 0`)
  oracle: MoA x week offsets     remove, for every MoA, each week's mean offset
                                 from the MoA's mean (lam = 1: every
                                 (MoA, week) group moved onto its MoA centre;
                                 within-group spread kept) — perfect removal
                                 of every batch difference that is not
                                 biology
  oracle: ... + shrink s         then pull every treated well a fraction s
                                 towards its MoA centre (tighter clusters)
  oracle: collapse to MoA mean   every treated well moved a fraction lam onto
                                 its MoA mean

Scored exactly as the anchors (`balans evaluate`, protocol of
docs/anchors.md), seeds 42, 1, 2, 3 of evaluate's k-means averaged (the bio
metrics move by +-0.05 between seeds on these 302 wells).

Read: batch = mean(BRAS, iLISI, kBET, graph conn., PCR cmp.). iLISI (k = 90
over all treated wells) and PCR comparison (batch R^2 of the PCs) reward
mixing wells of *different* MoAs across weeks: on BBBC021 every compound sits
in one week and most MoAs in 2-3, so the MoA composition of a week is
biology, and an embedding that keeps (or sharpens) MoA structure keeps it.

Run: `bash benches/anchors/run.sh --ceiling` -> docs/ceiling.md, docs/ceiling.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
import run_anchors  # noqa: E402

SEEDS = (42, 1, 2, 3)
KEYS = [("BRAS", "bras"), ("iLISI", "ilisi"), ("kBET", "kbet"), ("graph conn.", "graph_connectivity"),
        ("PCR cmp.", "pcr_comparison"), ("NMI", "nmi"), ("ARI", "ari"), ("sil. label", "silhouette_label"),
        ("cLISI", "clisi"), ("batch", "batch"), ("bio", "bio"), ("total", "total"),
        ("x-week mAP", "map_cross_batch"), ("NSCB", "nscb")]


def plate_normalise(raw: pd.DataFrame, feats: list[str], ctrl: np.ndarray) -> np.ndarray:
    """balans' preprocessing: per-plate DMSO median centring, pooled MAD x 1.4826."""
    x = raw[feats].to_numpy(np.float64).copy()
    for _, idx in raw.groupby("Metadata_Plate").indices.items():
        ref = idx[ctrl[idx]] if ctrl[idx].sum() >= 3 else idx
        x[idx] -= np.median(x[ref], axis=0)
    s = np.median(np.abs(x[ctrl] - np.median(x[ctrl], axis=0)), axis=0) * 1.4826
    s[s == 0] = 1.0
    return x / s


def oracles(z: np.ndarray, moa: np.ndarray, week: np.ndarray):
    yield "per-plate DMSO normalisation (no oracle)", z
    treated = [m for m in np.unique(moa) if m != "DMSO"]

    def week_centred(lam):
        y = z.copy()
        for m in treated:
            rows = moa == m
            mu = z[rows].mean(axis=0)
            for w in np.unique(week[rows]):
                g = rows & (week == w)
                y[g] = z[g] - lam * (z[g].mean(axis=0) - mu)
        return y

    def shrink(y, s):
        out = y.copy()
        for m in treated:
            rows = moa == m
            out[rows] = (1 - s) * y[rows] + s * y[rows].mean(axis=0)
        return out

    for lam in (0.5, 1.0):
        y = week_centred(lam)
        yield f"oracle: MoA x week offsets removed (lam {lam})", y
        yield f"oracle: MoA x week offsets removed (lam {lam}) + shrink 0.5", shrink(y, 0.5)
    for lam in (0.6, 0.9):
        yield f"oracle: collapse to MoA mean (lam {lam})", shrink(z, lam)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO / "data/bbbc021/bbbc021_wells_annotated.csv.gz")
    ap.add_argument("--docs", type=Path, default=REPO / "docs")
    ap.add_argument("--balans", type=Path, default=None)
    a = ap.parse_args(argv)
    ctx = {"balans": run_anchors.find_balans(a.balans), "batch_col": "Metadata_Week",
           "label_col": "Metadata_MoA", "control": "DMSO"}
    raw, meta, feats, _, ctrl, _ = run_anchors.load_protocol_table(
        a.data, ctx["batch_col"], ctx["label_col"], ctx["control"])
    z = plate_normalise(raw, feats, ctrl)
    extra = ["--exclude", run_anchors.BALANS_EXCLUDE, "--no-baseline-scores"]

    def score(table: Path, seed: int, out: Path) -> dict:
        return run_anchors.evaluate({**ctx, "seed": seed}, table, a.data, extra, out)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        table = tmp / "t.parquet"
        for name, y in oracles(z, raw["Metadata_MoA"].to_numpy(), raw["Metadata_Week"].to_numpy()):
            run_anchors.feature_frame(meta, y, feats).to_parquet(table, index=False)
            reps = [score(table, s, tmp / f"e{s}.json") for s in SEEDS]
            mean = {k: float(np.mean([r[k] for r in reps])) for _, k in KEYS if reps[0].get(k) is not None}
            rows.append({"method": name, "seed42": {k: reps[0].get(k) for _, k in KEYS}, "mean": mean})
            print(f"[ceiling] {name}: batch {mean['batch']:.3f} bio {mean['bio']:.3f}", flush=True)
    md = ["# Oracle ceiling on BBBC021", "",
          "Generated by `bash benches/anchors/run.sh --ceiling` (script `benches/anchors/ceiling.py`); "
          "do not edit by hand. Every oracle row **uses the true MoA labels** — no correction can; they bound "
          "what a correction that keeps the biology can score on this metric set. Scored like the anchors "
          "(`balans evaluate`), mean over evaluate seeds 42, 1, 2, 3.", "",
          "| table | " + " | ".join(h for h, _ in KEYS) + " |", "|---|" + "---|" * len(KEYS)]
    for r in rows:
        md.append(f"| {r['method']} | " + " | ".join(run_anchors.fmt(r["mean"].get(k)) for _, k in KEYS) + " |")
    best = max((r for r in rows if r["method"].startswith("oracle")), key=lambda r: r["mean"]["batch"])
    md += ["", f"Even with the answer key, the best oracle batch score is {best['mean']['batch']:.3f} "
           f"(bio {best['mean']['bio']:.3f}; {best['method']}): iLISI (k = 90 over all treated wells) and PCR comparison stay low because each "
           "compound sits in one week, so a week's MoA composition is biology. None of these label-respecting "
           "oracles comes near a batch score of 0.65; the methods measured above it (Seurat RPCA, 0.706 in "
           "docs/anchors.md) pay with bio and cross-week MoA retrieval — they move wells of different MoAs "
           "together across weeks.", ""]
    a.docs.mkdir(parents=True, exist_ok=True)
    (a.docs / "ceiling.md").write_text("\n".join(md))
    (a.docs / "ceiling.json").write_text(json.dumps({"seeds": SEEDS, "rows": rows}, indent=2) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    run_anchors.cli(main, "ceiling")
