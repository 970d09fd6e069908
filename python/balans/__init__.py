"""BALANS batch correction for Cell Painting profiles, from Python.

The functions take the data the way it is held: a pandas ``DataFrame``, a
``pyarrow.Table`` (or any Arrow stream: polars, DuckDB, ...), an
``anndata.AnnData`` or a path to a table file (Parquet, CSV, CSV.gz, Arrow
IPC), and return the same kind. Tables follow the pycytominer layout:
``Metadata_*`` columns are metadata and pass through; other numeric columns
are features. In an AnnData, ``X`` holds the features (``var_names`` are
their names) and ``obs`` the metadata.

The work is done by the balans Rust crate, with the functions the ``balans``
command-line tool calls: ``balans.correct`` returns the values ``balans
correct`` writes, ``balans.fit(...).save(dir)`` writes what ``balans
correct --save-model dir`` writes, and ``Model.transform`` corrects like
``balans apply``. Errors are :class:`BalansError` (a ``ValueError``) with
the tool's messages, naming the table, the column and the row. Progress and
warnings go to the ``logging`` loggers under ``balans``.

See docs/python.md for a worked example.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pathlib
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np
import pyarrow as pa

from . import _balans
from ._balans import BalansError

__all__ = ["BalansError", "Model", "correct", "evaluate", "fit", "load", "__version__"]

__version__: str = _balans.version()

logging.getLogger("balans").addHandler(logging.NullHandler())

PathLike = Union[str, "os.PathLike[str]"]

#: Arguments that describe the table layout (the ``[correct]`` section of
#: the configuration); any other keyword goes to ``[method]``.
_LAYOUT_KEYS = ("batch_col", "plate_col", "control", "exclude", "label_col", "non_finite", "max_abs_value")


# ---------------------------------------------------------------- input kinds


def _is_pandas(data: Any) -> bool:
    try:
        import pandas as pd
    except ImportError:
        return False
    return isinstance(data, pd.DataFrame)


def _is_anndata(data: Any) -> bool:
    try:
        import anndata
    except ImportError:
        return False
    return isinstance(data, anndata.AnnData)


def _control_column(control: Optional[str]) -> Optional[str]:
    if control is None:
        return None
    return control.split("=", 1)[0]


class _Input:
    """One argument as what the native module takes, and how to give a
    result back in the kind it came in."""

    def __init__(self, data: Any, obs_columns: Iterable[Optional[str]], what: str = "data") -> None:
        self.kind: str
        self.arrow: Any
        self.source: str
        self._back: Callable[[pa.Table], Any] = lambda t: t
        if isinstance(data, (str, os.PathLike)):
            self.kind, self.arrow, self.source = "path", os.fspath(data), os.fspath(data)
        elif isinstance(data, pa.Table):
            self.kind, self.arrow, self.source = "arrow", data, "pyarrow.Table"
        elif isinstance(data, pa.RecordBatch):
            self.kind, self.arrow, self.source = "arrow", pa.Table.from_batches([data]), "pyarrow.RecordBatch"
            self._back = lambda t: t.combine_chunks().to_batches()[0] if t.num_rows else t
        elif _is_pandas(data):
            self.kind, self.source = "pandas", "DataFrame"
            self.arrow = pa.Table.from_pandas(data, preserve_index=False)
            index = data.index

            def back(t: pa.Table) -> Any:
                out = t.to_pandas()
                out.index = index
                return out

            self._back = back
        elif _is_anndata(data):
            self.kind, self.source = "anndata", "AnnData"
            self.arrow, self._back = _anndata_table(data, obs_columns)
        elif hasattr(data, "__arrow_c_stream__"):
            self.kind, self.source = "arrow", type(data).__name__
            self.arrow = pa.table(data)
        else:
            raise BalansError(
                f"{what}: expected a pandas DataFrame, a pyarrow Table, an AnnData or a path, "
                f"got {type(data).__name__}"
            )
        if what != "data" and self.kind != "path":
            self.source = what

    def back(self, table: pa.Table) -> Any:
        """``table`` (the corrected version) in the kind of the input."""
        return self._back(table)


def _anndata_table(adata: Any, obs_columns: Iterable[Optional[str]]) -> Tuple[pa.Table, Callable[[pa.Table], Any]]:
    """An AnnData as a table (the named ``obs`` columns, then one column per
    variable of ``X``) and the function giving a corrected table back as an
    AnnData with ``X`` replaced and everything else kept."""
    x = adata.X
    if x is None:
        raise BalansError("AnnData: X is empty (None)")
    if not isinstance(x, np.ndarray):
        if hasattr(x, "toarray"):
            raise BalansError(
                "AnnData: X is a sparse matrix; profiles are dense (convert with adata.X = adata.X.toarray())"
            )
        x = np.asarray(x)
    var = [str(v) for v in adata.var_names]
    if len(set(var)) != len(var):
        raise BalansError("AnnData: var_names are not unique (adata.var_names_make_unique())")
    meta = [v for v in var if v.startswith("Metadata_")]
    if meta:
        raise BalansError(
            f"AnnData: variable {meta[0]!r} starts with Metadata_, which marks metadata; "
            "features in X need other names"
        )
    cols = [c for c in dict.fromkeys(c for c in obs_columns if c) if c in adata.obs.columns]
    clash = [c for c in cols if c in set(var)]
    if clash:
        raise BalansError(f"AnnData: {clash[0]!r} is both an obs column and a variable name")
    obs = pa.Table.from_pandas(adata.obs[cols], preserve_index=False)
    xf = np.asfortranarray(x)  # one copy; each column is then a zero-copy slice
    arrays = list(obs.columns) + [pa.array(xf[:, j]) for j in range(xf.shape[1])]
    table = pa.Table.from_arrays(arrays, names=cols + var)

    def back(t: pa.Table) -> Any:
        kept = [v for v in var if v in t.column_names]
        new_x = np.column_stack([t.column(v).to_numpy() for v in kept]) if kept else np.empty((t.num_rows, 0))
        out = adata.copy() if len(kept) == len(var) else adata[:, kept].copy()
        out.X = new_x.astype(x.dtype, copy=False)
        return out

    return table, back


def _plain(value: Any) -> Any:
    """A keyword value as JSON: numpy scalars as Python ones, infinities as
    text (JSON has none)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _overrides(layout: Dict[str, Any], method: Dict[str, Any], qc: Optional[Dict[str, Any]] = None) -> str:
    doc = {
        "correct": {k: _plain(v) for k, v in layout.items() if v is not None},
        "method": {k: _plain(v) for k, v in method.items() if v is not None},
    }
    if qc:
        doc["qc"] = {k: _plain(v) for k, v in qc.items() if v is not None}
    return json.dumps(doc)


def _config_path(config: Optional[PathLike]) -> Optional[str]:
    return None if config is None else os.fspath(config)


# ------------------------------------------------------------------- correct


def correct(
    data: Any,
    *,
    batch_col: Optional[str] = None,
    control: Optional[str] = None,
    plate_col: Optional[str] = None,
    exclude: Optional[str] = None,
    label_col: Optional[str] = None,
    non_finite: Optional[str] = None,
    max_abs_value: Optional[float] = None,
    output: Optional[PathLike] = None,
    config: Optional[PathLike] = None,
    **method_options: Any,
) -> Any:
    """Correct batch effects; the result is the same kind as ``data``.

    ``data`` is a pandas DataFrame, a pyarrow Table, an AnnData (``X`` is
    corrected; ``obs``, ``var`` and the rest are kept) or a path to a table
    file. For a path, ``output=`` names the file written (format by
    extension) and the output path is returned; without ``output`` the
    corrected ``pyarrow.Table`` is returned. A path may also be a folder or
    a glob of plate files (``"plates/*.parquet"``): one fit over all of
    them, and one corrected file per input, same name, under the folder
    ``output``.

    The keywords are ``balans correct``'s options with the config file's
    names: ``batch_col`` (required here or in ``config``), ``control``
    (negative controls as ``"COLUMN=VALUE"``), ``plate_col`` (default
    ``Metadata_Plate``), ``exclude`` (regex of features passed through),
    ``label_col``, ``non_finite`` (``"error"``, ``"impute"`` or
    ``"drop-features"``), ``max_abs_value``; every other keyword is a
    ``[method]`` option (``k=15``, ``rounds=2``, ``seed=42``,
    ``trust_rule="mutual"``, ...; see config/balans.toml). ``config`` is a
    TOML file as for ``balans correct --config``; ``BALANS_*`` environment
    overrides apply as for the CLI, and keywords override both.
    """
    layout = dict(
        batch_col=batch_col,
        control=control,
        plate_col=plate_col,
        exclude=exclude,
        label_col=label_col,
        non_finite=non_finite,
        max_abs_value=max_abs_value,
    )
    inp = _Input(data, [batch_col, plate_col or "Metadata_Plate", _control_column(control), label_col])
    overrides = _overrides(layout, method_options)
    if inp.kind == "path":
        if output is not None:
            _balans.correct_data(inp.arrow, overrides, os.fspath(output), _config_path(config))
            return pathlib.Path(output)
        return _balans.correct_data(inp.arrow, overrides, None, _config_path(config), inp.source)
    if output is not None:
        raise BalansError("output= is for a path input; an in-memory table is returned corrected")
    table = _balans.correct_data(inp.arrow, overrides, None, _config_path(config), inp.source)
    return inp.back(table)


# ---------------------------------------------------------------- fit / Model


class Model:
    """A fitted BALANS model: the incremental model ``balans serve`` keeps
    and ``balans correct --save-model`` saves.

    ``transform`` corrects new plates against it as ``balans apply`` does:
    inductively, one plate at a time (the plate column; a table without one
    is one plate), each aligned to the model and then incorporated, so the
    rows already in the model never move. The model therefore grows with
    every new plate; a plate it already holds (same id, same content) is a
    replay and gets the values it got the first time, so transforming the
    same data twice gives the same result. A plate id already used with
    other content is refused.
    """

    def __init__(self, native: Any) -> None:
        self._native = native

    @property
    def features(self) -> List[str]:
        """The feature columns the model corrects, in order."""
        return list(self._native.features)

    @property
    def batches(self) -> List[str]:
        """The batches the model holds."""
        return list(self._native.batches)

    @property
    def rows(self) -> int:
        """The rows (wells) the model holds."""
        return int(self._native.rows)

    @property
    def config(self) -> str:
        """The resolved configuration (TOML) the model was fitted with."""
        return str(self._native.config)

    def transform(self, data: Any, *, output: Optional[PathLike] = None) -> Any:
        """Correct ``data`` against the model (``balans apply``); the result
        is the same kind as ``data`` (for a path with ``output=``, the file
        is written and its path returned; a folder or glob of plate files
        is applied file by file in name order, one output per input under
        the folder ``output``). The table layout (batch, plate,
        control columns) is the one the model was fitted with."""
        layout = self._native.layout()
        inp = _Input(data, [layout.get("batch_col"), layout.get("plate_col"), _control_column(layout.get("control"))])
        if inp.kind == "path" and output is not None:
            self._native.transform_data(inp.arrow, os.fspath(output))
            return pathlib.Path(output)
        if output is not None:
            raise BalansError("output= is for a path input; an in-memory table is returned corrected")
        table = self._native.transform_data(inp.arrow, None, inp.source)
        return table if inp.kind == "path" else inp.back(table)

    def save(self, path: PathLike) -> None:
        """Write the model to the directory ``path`` (created; an existing
        saved model is not overwritten): the files of ``balans correct
        --save-model``, read back by :func:`load`, ``balans apply --model``
        and ``balans serve --model``."""
        self._native.save(os.fspath(path))

    def __repr__(self) -> str:
        return f"balans.Model({self.rows} rows, {len(self.batches)} batches, {len(self.features)} features)"


def fit(
    data: Any,
    *,
    batch_col: Optional[str] = None,
    control: Optional[str] = None,
    plate_col: Optional[str] = None,
    exclude: Optional[str] = None,
    non_finite: Optional[str] = None,
    max_abs_value: Optional[float] = None,
    config: Optional[PathLike] = None,
    **method_options: Any,
) -> Model:
    """Fit a model on reference plates (the fit of :func:`correct`, with the
    same keywords) and return it; ``Model.transform`` then corrects new
    plates against it, ``Model.save`` writes it."""
    layout = dict(
        batch_col=batch_col,
        control=control,
        plate_col=plate_col,
        exclude=exclude,
        non_finite=non_finite,
        max_abs_value=max_abs_value,
    )
    inp = _Input(data, [batch_col, plate_col or "Metadata_Plate", _control_column(control)])
    native = _balans.fit_data(inp.arrow, _overrides(layout, method_options), _config_path(config), inp.source)
    return Model(native)


def load(path: PathLike, *, config: Optional[PathLike] = None) -> Model:
    """Read a saved model (``Model.save`` or ``balans correct --save-model``);
    its checksums and format version are verified. New plates are read with
    the table layout it was fitted with; ``config`` (a TOML file) and the
    ``BALANS_*`` environment override it, as for ``balans apply``."""
    return Model(_balans.load_model(os.fspath(path), _config_path(config)))


# ------------------------------------------------------------------ evaluate


def evaluate(
    data: Any,
    baseline: Any = None,
    *,
    batch_col: str = "Metadata_Batch",
    label_col: str = "Metadata_MoA",
    control: Optional[str] = None,
    compound_col: str = "Metadata_Compound",
    treatment_col: str = "Metadata_Treatment",
    plate_col: str = "Metadata_Plate",
    exclude: Optional[str] = None,
    seed: int = 0,
    robust_scale: bool = True,
    pca: int = 50,
    baseline_scores: bool = True,
) -> Dict[str, Any]:
    """Score ``data`` with the metric suite of ``balans evaluate`` and return
    its ``--json`` report as a dict (one key per metric, plus the ``batch``,
    ``bio`` and ``total`` means; ``before`` holds the baseline's scores).

    ``baseline`` is the uncorrected version of the same rows (any kind
    ``data`` can be), used for the PCR comparison and scored itself unless
    ``baseline_scores=False``. The keywords are the CLI's flags:
    ``robust_scale=False`` is ``--no-robust-scale``, ``pca=0`` scores the
    features as given.
    """
    cols = [batch_col, label_col, _control_column(control), compound_col, treatment_col, plate_col]
    inp = _Input(data, cols)
    base = None if baseline is None else _Input(baseline, cols, what="baseline")
    options = json.dumps(
        dict(
            batch_col=batch_col,
            label_col=label_col,
            control=control,
            compound_col=compound_col,
            treatment_col=treatment_col,
            plate_col=plate_col,
            exclude=exclude,
            seed=int(seed),
            robust_scale=bool(robust_scale),
            pca=int(pca),
            baseline_scores=bool(baseline_scores),
        )
    )
    report = _balans.evaluate_data(inp.arrow, options, None if base is None else base.arrow, inp.source)
    return json.loads(report)
