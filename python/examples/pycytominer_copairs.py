"""pycytominer normalisation -> balans -> copairs mAP, on BBBC021.

The worked example of docs/python.md, in both forms: a pandas DataFrame and
an AnnData. Run from the repository root:

    python python/examples/pycytominer_copairs.py

Needs: pip install . pycytominer copairs anndata
"""

import re

import anndata as ad
import numpy as np
import pandas as pd
import pycytominer
from copairs.map import average_precision, mean_average_precision

import balans

df = pd.read_csv("data/bbbc021/bbbc021_wells_annotated.csv.gz")
meta = [c for c in df.columns if c.startswith("Metadata_")]
feats = [c for c in df.columns if c not in meta and not re.search("_Location_|_Center_", c)]

# 1. pycytominer: standardise every feature against the DMSO wells.
norm = pycytominer.normalize(
    df[meta + feats],
    features=feats,
    meta_features=meta,
    samples="Metadata_MoA == 'DMSO'",
    method="standardize",
)


def map_scores(profiles: pd.DataFrame, cross_batch: bool) -> pd.Series:
    """copairs mAP of MoA retrieval: positives share the MoA but not the
    compound (nor the week, with cross_batch); negatives have another MoA.
    DMSO wells are left out."""
    p = profiles[profiles["Metadata_MoA"] != "DMSO"].reset_index(drop=True)
    diff = ["Metadata_Compound"] + (["Metadata_Week"] if cross_batch else [])
    ap = average_precision(
        p[meta], p[feats].to_numpy(), pos_sameby=["Metadata_MoA"], pos_diffby=diff,
        neg_sameby=[], neg_diffby=["Metadata_MoA"], progress_bar=False,
    )
    m = mean_average_precision(ap, sameby=["Metadata_MoA"], null_size=10000, threshold=0.05, seed=0,
                               progress_bar=False)
    significant = int(m["below_corrected_p"].sum())
    return pd.Series({"mAP": round(m["mean_average_precision"].mean(), 3),
                      "MoAs with p<0.05": f"{significant} of {len(m)}"})


# 2a. balans on the DataFrame: the same DataFrame back, features corrected.
corrected = balans.correct(norm, batch_col="Metadata_Week", control="Metadata_MoA=DMSO")

# 2b. The same in AnnData form: X corrected, obs and var kept.
adata = ad.AnnData(
    X=norm[feats].to_numpy(),
    obs=norm[meta].set_axis([f"well{i}" for i in range(len(norm))]),
    var=pd.DataFrame(index=feats),
)
corrected_ad = balans.correct(adata, batch_col="Metadata_Week", control="Metadata_MoA=DMSO")
assert np.array_equal(corrected_ad.X, corrected[feats].to_numpy())
as_frame = pd.concat([corrected_ad.obs.reset_index(drop=True), corrected_ad.to_df().reset_index(drop=True)], axis=1)

# 3. copairs mAP before and after.
table = pd.DataFrame({
    "normalised (pycytominer)": map_scores(norm, cross_batch=False),
    "+ balans (DataFrame)": map_scores(corrected, cross_batch=False),
    "+ balans (AnnData)": map_scores(as_frame, cross_batch=False),
    "normalised, cross-week": map_scores(norm, cross_batch=True),
    "+ balans, cross-week": map_scores(corrected, cross_batch=True),
}).T
print(table.to_string())

# 4. balans' own metric suite, before -> after.
report = balans.evaluate(corrected, baseline=norm, batch_col="Metadata_Week", label_col="Metadata_MoA",
                         control="Metadata_MoA=DMSO")
print({k: round(report[k], 3) for k in ("batch", "bio", "total")},
      "before:", {k: round(report["before"][k], 3) for k in ("batch", "bio", "total")})
