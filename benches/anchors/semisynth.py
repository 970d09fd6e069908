#!/usr/bin/env python3
"""Semi-synthetic batch sets from the real LINCS Cell Painting plate, and the
anchor harness run on each of them.

The bundled plate (`data/lincs/`, SQ00015054, 384 wells x 454 features, one
plate, no batch axis) — its 24 DMSO wells and its treated wells at >= 1 uM
(the 3 highest of 6 doses; lower doses barely differ from DMSO) — is copied into 4 batches x 2 plates. Every copy keeps the
real well profiles (the biology: 56 compounds x 6 doses, 24 DMSO wells) and gets

* replicate noise: for each row, half the difference of two random DMSO wells
  (real, correlated noise at half the control spread) plus independent
  N(0, 0.3 SD) per feature, so copies are replicates, not duplicates;
* a small per-plate additive effect (0.2 feature SD);
* the batch effect of the set (known, seeded):

  linear     per batch and Cell Painting channel (DNA, ER, RNA, AGP, Mito) a
             multiplicative gain exp(N(0, 0.25)), plus a per-feature shift
             N(0, 0.5) feature SD;
  nonlinear  the linear effect, then a per-feature warp
             0.6 SD * tanh(x / SD + phase) and a shift along one random
             direction proportional to the row's phenotype strength (its
             distance from the DMSO median) — an effect that depends on the
             cell state, which no per-batch affine map removes;
  partial    the nonlinear effect, and a third of the compounds (seeded
             choice, all their doses) present in batch 1 only: a biological
             state present in one batch, which a correction must not drag
             onto another batch's states.

Ground truth is known: batch = `Metadata_Batch`, plate = `Metadata_Plate`,
label = compound (`Metadata_broad_sample`, DMSO = control). The anchor harness
(`run_anchors.py`) runs every method on each set and scores it with
`balans evaluate` (metrics on the treated wells, label = compound; the
retrieval metrics run with `--compound-col Metadata_Treatment`, so x-batch mAP
asks for the same compound at another dose in another batch; NSCB does not
apply, every treatment being in every batch).

Results go to docs/semisynth.md and docs/semisynth.json (the per-set anchor
tables are written under out/semisynth/<set>/). Semi-synthetic: the batch
effects are injected, not measured — say so wherever these figures are quoted.

Run: `bash benches/anchors/run.sh --semisynth` (same venv and binary as the
BBBC021 harness).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
import run_anchors  # noqa: E402

CHANNELS = ("DNA", "ER", "RNA", "AGP", "Mito")
SETS = ("linear", "nonlinear", "partial")
BATCHES = 4
PLATES_PER_BATCH = 2
LABEL = "Metadata_broad_sample"
CONTROL = "DMSO"
# Doses below this (uM) barely move A549 profiles on this plate; they are left out.
MIN_DOSE = 1.0


def channel_of(name: str) -> str:
    for part in re.split(r"[_]", name):
        if part in CHANNELS:
            return part
    return "other"


def build(kind: str, base: pd.DataFrame, seed: int) -> pd.DataFrame:
    """One semi-synthetic table (rows = BATCHES x PLATES_PER_BATCH copies)."""
    rng = np.random.default_rng(seed)
    feats = [c for c in base.columns
             if not c.startswith("Metadata_") and pd.api.types.is_numeric_dtype(base[c])]
    dose = pd.to_numeric(base["Metadata_mmoles_per_liter"], errors="coerce").fillna(0.0).to_numpy()
    is_dmso = (base[LABEL].astype(str) == CONTROL).to_numpy()
    base = base[is_dmso | (dose >= MIN_DOSE)].reset_index(drop=True)
    base["Metadata_Compound"] = base[LABEL].astype(str)
    base["Metadata_Treatment"] = base[LABEL].astype(str) + "@" + base["Metadata_mmoles_per_liter"].astype(str)
    meta_cols = [c for c in base.columns if c.startswith("Metadata_")]
    x0 = base[feats].to_numpy(np.float64)
    ctrl = (base[LABEL].astype(str) == CONTROL).to_numpy()
    sd = x0[ctrl].std(axis=0) + 1e-6
    dmso = x0[ctrl]
    centre = np.median(dmso, axis=0)
    strength = np.linalg.norm((x0 - centre) / sd, axis=1)
    strength = strength / np.median(strength[ctrl])
    chan = np.array([channel_of(f) for f in feats])
    compounds = sorted(set(base.loc[~ctrl, LABEL].astype(str)))
    only_one = set(rng.choice(compounds, size=len(compounds) // 3, replace=False)) if kind == "partial" else set()
    out = []
    for b in range(BATCHES):
        gain = np.ones(len(feats))
        for c in CHANNELS + ("other",):
            gain[chan == c] = np.exp(rng.normal(0.0, 0.25))
        shift = rng.normal(0.0, 0.5, len(feats)) * sd
        phase = rng.normal(0.0, 1.0, len(feats))
        direction = rng.normal(0.0, 1.0, len(feats))
        direction /= np.linalg.norm(direction)
        for p in range(PLATES_PER_BATCH):
            i = rng.integers(0, len(dmso), len(x0))
            j = (i + 1 + rng.integers(0, len(dmso) - 1, len(x0))) % len(dmso)
            x = x0 + 0.5 * (dmso[i] - dmso[j]) + rng.normal(0.0, 0.3, x0.shape) * sd
            x = x + rng.normal(0.0, 0.2, len(feats)) * sd  # plate effect
            x = gain * x + shift
            if kind in ("nonlinear", "partial"):
                x = x + 0.6 * sd * np.tanh(x / sd + phase)
                x = x + (1.5 * np.sqrt(len(feats)) * np.median(sd)) * 0.3 * strength[:, None] * direction
            m = base[meta_cols].copy()
            m["Metadata_Batch"] = f"B{b + 1}"
            m["Metadata_Plate"] = f"B{b + 1}_P{p + 1}"
            if only_one and b > 0:
                keep = ~base[LABEL].astype(str).isin(only_one).to_numpy()
            else:
                keep = np.ones(len(base), bool)
            part = pd.concat([m.reset_index(drop=True), pd.DataFrame(x, columns=feats)], axis=1)
            out.append(part[keep])
    return pd.concat(out, ignore_index=True)


def rerender(docs: Path) -> None:
    """Rewrite docs/semisynth.md from docs/semisynth.json (no rerun)."""
    summary = json.loads((docs / "semisynth.json").read_text())
    (docs / "semisynth.md").write_text(render(summary))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO / "data/lincs/SQ00015054_normalized_feature_select.csv.gz")
    ap.add_argument("--out", type=Path, default=REPO / "out/semisynth")
    ap.add_argument("--docs", type=Path, default=REPO / "docs")
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--methods", default="none,dmso_centre,combat,sphering,harmony,scanorama,seurat_rpca,balans,balans_stream")
    a, rest = ap.parse_known_args(argv)
    if not a.data.exists():
        raise run_anchors.HarnessError(f"input table {a.data} does not exist")
    base = pd.read_csv(a.data)
    summary = {"sets": {}, "seed": a.seed, "source": str(a.data.relative_to(REPO)) if a.data.is_relative_to(REPO) else str(a.data)}
    status = 0
    for k, kind in enumerate(a.sets.split(",")):
        if kind not in SETS:
            raise run_anchors.HarnessError(f"unknown set '{kind}' (known: {', '.join(SETS)})")
        d = a.out / kind
        d.mkdir(parents=True, exist_ok=True)
        table = build(kind, base, a.seed + k)
        path = d / f"lincs_{kind}.csv.gz"
        table.to_csv(path, index=False)
        print(f"[semisynth] {kind}: {len(table)} rows -> {path}", flush=True)
        rc = run_anchors.main([
            "--data", str(path), "--out", str(d), "--docs", str(d),
            "--batch-col", "Metadata_Batch", "--label-col", LABEL, "--control", CONTROL,
            "--reference", str(d / "no-reference.md"), "--methods", a.methods,
            "--evaluate-arg=--compound-col=Metadata_Treatment", *rest,
        ])
        status = status or rc
        summary["sets"][kind] = json.loads((d / "anchors.json").read_text())
    md = render(summary)
    a.docs.mkdir(parents=True, exist_ok=True)
    (a.docs / "semisynth.md").write_text(md)
    (a.docs / "semisynth.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    print(md)
    return status


COLS = [("batch", "batch"), ("bio", "bio"), ("total", "total"), ("kBET", "kbet"), ("iLISI", "ilisi"),
        ("PCR cmp.", "pcr_comparison"), ("NMI", "nmi"), ("ARI", "ari"), ("sil. label", "silhouette_label"),
        ("x-batch mAP", "map_cross_batch")]


def render(summary: dict) -> str:
    lines = [
        "# Semi-synthetic batch sets from the real LINCS Cell Painting plate",
        "",
        "Generated by `bash benches/anchors/run.sh --semisynth` (script `benches/anchors/semisynth.py`); "
        "do not edit by hand. Machine-readable: `docs/semisynth.json`.",
        "",
        "**Semi-synthetic**: the biology is the real plate SQ00015054 (56 compounds x 6 doses, 24 DMSO "
        "wells, 454 features); the batch effects are injected with a known, seeded model (4 batches x 2 "
        "plates; see the script's docstring): `linear` = per-channel gains + per-feature shifts; "
        "`nonlinear` = linear + per-feature tanh warp + a shift that grows with the phenotype strength; "
        "`partial` = nonlinear + a third of the compounds present in batch B1 only. Label = compound "
        "(`Metadata_broad_sample`), controls = DMSO; metrics on treated wells, scored by `balans evaluate` "
        "exactly as in docs/anchors.md; x-batch mAP here = the same compound at another dose retrieved in another batch (NSCB does not apply: every treatment is in every batch, so no treatment median shares no batch with another).",
        "",
    ]
    for kind, rep in summary["sets"].items():
        lines += [f"## {kind}", "", "| method | " + " | ".join(h for h, _ in COLS) + " | fit |",
                  "|---|" + "---|" * (len(COLS) + 1)]
        for r in rep["results"]:
            if r.get("check_row"):
                continue
            if r.get("status") != "ok":
                lines.append(f"| {r['method']} | " + " | ".join("—" for _ in COLS) + f" | {r.get('status')} |")
                continue
            m = r["report"]
            cells = [run_anchors.fmt(m.get(k)) for _, k in COLS]
            lines.append(f"| {r['method']} | " + " | ".join(cells) + f" | {run_anchors.fmt_secs(r.get('fit_seconds'))} |")
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    run_anchors.cli(main, "semisynth")
