"""Run harmonypy on one synthetic table (the whole process: read, fit, write).

Usage: python harmony_one.py INPUT.parquet OUTPUT.parquet
Features = every column not starting with Metadata_ (the same 50 features
balans corrects); batch = Metadata_Batch; 10 Harmony iterations.
"""
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

import harmonypy


def main() -> None:
    src, dst = sys.argv[1], sys.argv[2]
    df = pq.read_table(src).to_pandas()
    feats = [c for c in df.columns if not c.startswith("Metadata_")]
    x = df[feats].to_numpy(dtype=np.float64)
    meta = df[["Metadata_Batch"]]
    ho = harmonypy.run_harmony(x, meta, ["Metadata_Batch"], max_iter_harmony=10, verbose=False)
    z = np.asarray(ho.Z_corr)
    if z.shape != x.shape:
        z = z.T
    out = df.copy()
    out[feats] = z
    out.to_parquet(dst, index=False)


if __name__ == "__main__":
    main()
