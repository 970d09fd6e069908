"""Shared set-up: the BBBC021 table, the balans binary, and a runner that
calls the CLI the way a user would."""

from __future__ import annotations

import os
import pathlib
import subprocess
from typing import List

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BBBC021 = ROOT / "data" / "bbbc021" / "bbbc021_wells_annotated.csv.gz"

#: The options of the README's reference run.
LAYOUT = dict(
    batch_col="Metadata_Week",
    control="Metadata_MoA=DMSO",
    exclude="_Location_|_Center_",
)
CLI_LAYOUT = [
    "--batch-col", "Metadata_Week",
    "--control", "Metadata_MoA=DMSO",
    "--exclude", "_Location_|_Center_",
]


def _binary() -> pathlib.Path:
    env = os.environ.get("BALANS_BIN")
    if env:
        return pathlib.Path(env)
    for profile in ("debug", "release"):
        p = ROOT / "target" / profile / "balans"
        if p.exists():
            return p
    raise RuntimeError("no balans binary: run `cargo build` first or set BALANS_BIN")


@pytest.fixture(scope="session")
def cli():
    """Run `balans ARGS...`; returns the completed process (check=True)."""
    binary = _binary()

    def run(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([str(binary), "-q", *map(str, args)], capture_output=True, text=True)
        if done.returncode != 0:
            raise AssertionError(f"balans {' '.join(map(str, args))} failed:\n{done.stderr}")
        return done

    return run


@pytest.fixture(scope="session")
def bbbc021_arrow() -> pa.Table:
    """BBBC021 as pyarrow reads the CSV (correctly rounded floats, as the
    CLI's reader)."""
    return pacsv.read_csv(BBBC021)


@pytest.fixture(scope="session")
def bbbc021_df():
    pd = pytest.importorskip("pandas")
    return pd.read_csv(BBBC021, float_precision="round_trip")


def feature_columns(table: pa.Table) -> List[str]:
    """The numeric non-Metadata_ columns (the features, excluded ones too)."""
    return [
        f.name
        for f in table.schema
        if not f.name.startswith("Metadata_")
        and (pa.types.is_floating(f.type) or pa.types.is_integer(f.type))
    ]


def assert_same_values(got: pa.Table, want: pa.Table) -> None:
    """Same columns, and every value bit for bit (metadata aside)."""
    assert got.column_names == want.column_names
    assert got.num_rows == want.num_rows
    for name in want.column_names:
        g, w = got.column(name).combine_chunks(), want.column(name).combine_chunks()
        if pa.types.is_floating(w.type):
            assert g.type == w.type, name
            gb = np.asarray(g.to_numpy(zero_copy_only=False)).view(np.uint8)
            wb = np.asarray(w.to_numpy(zero_copy_only=False)).view(np.uint8)
            assert np.array_equal(gb, wb), f"column {name} differs"
        else:
            assert g.cast(w.type).equals(w), f"column {name} differs"


def read(path) -> pa.Table:
    return pq.read_table(path)
