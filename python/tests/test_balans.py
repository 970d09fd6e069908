"""The Python API against the CLI on BBBC021: same values, same files, same
errors, same figures."""

from __future__ import annotations

import json
import logging
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import balans
from conftest import BBBC021, CLI_LAYOUT, LAYOUT, assert_same_values, feature_columns, read

pd = pytest.importorskip("pandas")


@pytest.fixture(scope="module")
def cli_corrected(cli, tmp_path_factory):
    """`balans correct` on BBBC021 (the README's reference run)."""
    out = tmp_path_factory.mktemp("cli") / "corrected.parquet"
    cli("correct", "--input", BBBC021, "--output", out, *CLI_LAYOUT, "--label-col", "Metadata_MoA")
    return out


def test_path_to_path_writes_the_cli_file(cli_corrected, tmp_path):
    out = balans.correct(BBBC021, output=tmp_path / "py.parquet", label_col="Metadata_MoA", **LAYOUT)
    assert out == tmp_path / "py.parquet"
    # Same reader, same fit, same writer, same provenance: the same bytes.
    assert out.read_bytes() == cli_corrected.read_bytes()


def test_dataframe_equals_cli(cli_corrected, bbbc021_df):
    got = balans.correct(bbbc021_df, **LAYOUT)
    assert isinstance(got, pd.DataFrame)
    assert got.index.equals(bbbc021_df.index)
    want = read(cli_corrected)
    assert_same_values(pa.Table.from_pandas(got, preserve_index=False), want)
    # Metadata untouched; features changed.
    assert got["Metadata_Plate"].equals(bbbc021_df["Metadata_Plate"])
    feats = [c for c in feature_columns(want) if "_Location_" not in c and "_Center_" not in c]
    assert not np.allclose(got[feats].to_numpy(), bbbc021_df[feats].to_numpy())


def test_dataframe_index_is_kept(bbbc021_df):
    df = bbbc021_df.set_index(pd.Index([f"well{i}" for i in range(len(bbbc021_df))], name="id"))
    got = balans.correct(df, **LAYOUT)
    assert got.index.equals(df.index)
    assert list(got.columns) == list(df.columns)


def test_arrow_table_equals_cli_and_carries_provenance(cli_corrected, bbbc021_arrow):
    got = balans.correct(bbbc021_arrow, label_col="Metadata_MoA", **LAYOUT)
    assert isinstance(got, pa.Table)
    assert_same_values(got, read(cli_corrected))
    md = got.schema.metadata
    assert md[b"balans.version"].decode() == balans.__version__
    assert md[b"balans.seed"] == b"42"
    assert b'batch_col = "Metadata_Week"' in md[b"balans.config"]
    # The CLI's file carries the same provenance.
    file_md = pq.read_metadata(cli_corrected).metadata
    assert file_md[b"balans.config"] == md[b"balans.config"]


def test_arrow_chunks_and_record_batches(bbbc021_arrow):
    whole = balans.correct(bbbc021_arrow, **LAYOUT)
    chunked = pa.Table.from_batches(bbbc021_arrow.to_batches(max_chunksize=100))
    assert chunked.column(0).num_chunks > 1
    assert_same_values(balans.correct(chunked, **LAYOUT), whole)
    rb = bbbc021_arrow.combine_chunks().to_batches()[0]
    got = balans.correct(rb, **LAYOUT)
    assert isinstance(got, pa.RecordBatch)
    assert_same_values(pa.Table.from_batches([got]), whole)


def test_method_options_reach_the_fit(cli, bbbc021_arrow, tmp_path):
    out = tmp_path / "k.parquet"
    cli("correct", "--input", BBBC021, "--output", out, *CLI_LAYOUT, "--k", "7", "--rounds", "1", "--seed", "3")
    got = balans.correct(bbbc021_arrow, k=7, rounds=1, seed=np.int64(3), **LAYOUT)
    assert_same_values(got, read(out))
    default = balans.correct(bbbc021_arrow, **LAYOUT)
    assert not got.equals(default)


def test_config_file_and_keywords(bbbc021_arrow, tmp_path):
    cfg = tmp_path / "b.toml"
    cfg.write_text('[correct]\nbatch_col = "Metadata_Week"\ncontrol = "Metadata_MoA=DMSO"\n[method]\nk = 7\n')
    from_file = balans.correct(bbbc021_arrow, config=cfg, exclude=LAYOUT["exclude"])
    from_kw = balans.correct(bbbc021_arrow, k=7, **LAYOUT)
    assert_same_values(from_file, from_kw)


def test_anndata_round_trip_keeps_obs_and_var(bbbc021_df):
    ad = pytest.importorskip("anndata")
    meta = [c for c in bbbc021_df.columns if c.startswith("Metadata_")]
    feats = [c for c in bbbc021_df.columns if c not in meta]
    obs = bbbc021_df[meta].copy()
    obs.index = [f"well{i}" for i in range(len(obs))]
    obs["n_cells"] = np.arange(len(obs))  # a numeric obs column is not a feature
    var = pd.DataFrame({"compartment": [f.split("_")[0] for f in feats]}, index=feats)
    adata = ad.AnnData(X=bbbc021_df[feats].to_numpy(), obs=obs, var=var)
    adata.obsm["X_extra"] = np.ones((adata.n_obs, 2))
    got = balans.correct(adata, **LAYOUT)
    assert isinstance(got, ad.AnnData)
    pd.testing.assert_frame_equal(got.obs, adata.obs)
    pd.testing.assert_frame_equal(got.var, adata.var)
    assert np.array_equal(got.obsm["X_extra"], adata.obsm["X_extra"])
    assert got.X.dtype == adata.X.dtype
    # X is the DataFrame result's features, bit for bit; the input is untouched.
    want = balans.correct(bbbc021_df, **LAYOUT)[feats].to_numpy()
    assert np.array_equal(got.X.view(np.uint64), want.view(np.uint64))
    assert np.array_equal(adata.X, bbbc021_df[feats].to_numpy())


def test_anndata_float32(bbbc021_df):
    ad = pytest.importorskip("anndata")
    meta = [c for c in bbbc021_df.columns if c.startswith("Metadata_")]
    feats = [c for c in bbbc021_df.columns if c not in meta]
    adata = ad.AnnData(X=bbbc021_df[feats].to_numpy(np.float32), obs=bbbc021_df[meta].set_axis(
        [str(i) for i in range(len(bbbc021_df))]), var=pd.DataFrame(index=feats))
    got = balans.correct(adata, **LAYOUT)
    assert got.X.dtype == np.float32
    assert got.shape == adata.shape
    assert not np.array_equal(got.X, adata.X)


# ---------------------------------------------------------------- bad input


def test_nan_names_column_and_row(bbbc021_df):
    df = bbbc021_df.copy()
    df.loc[3, "Cells_AreaShape_Area"] = np.nan
    with pytest.raises(balans.BalansError) as e:
        balans.correct(df, **LAYOUT)
    msg = str(e.value)
    assert "DataFrame" in msg and "Cells_AreaShape_Area" in msg and "data row 4" in msg, msg
    assert isinstance(e.value, ValueError)


def test_missing_batch_column_names_it(bbbc021_df):
    with pytest.raises(balans.BalansError, match="no column 'Metadata_Batch'"):
        balans.correct(bbbc021_df, batch_col="Metadata_Batch")
    with pytest.raises(balans.BalansError, match="no batch column"):
        balans.correct(bbbc021_df)


def test_control_value_that_matches_nothing(bbbc021_df):
    with pytest.raises(balans.BalansError, match="no row has Metadata_MoA=dmso"):
        balans.correct(bbbc021_df, batch_col="Metadata_Week", control="Metadata_MoA=dmso")


def test_bad_options_are_refused_with_the_config_messages(bbbc021_df):
    with pytest.raises(balans.BalansError, match="kk"):
        balans.correct(bbbc021_df, kk=3, **LAYOUT)
    with pytest.raises(balans.BalansError, match="gain_shrinkage must be >= 0"):
        balans.correct(bbbc021_df, gain_shrinkage=-1.0, **LAYOUT)
    with pytest.raises(balans.BalansError, match="trust_rule"):
        balans.correct(bbbc021_df, trust_rule="sometimes", **LAYOUT)


def test_unreadable_file_names_it(tmp_path):
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(balans.BalansError, match="broken.parquet"):
        balans.correct(bad, output=tmp_path / "out.parquet", **LAYOUT)


def test_wrong_kind_of_input():
    with pytest.raises(balans.BalansError, match="expected a pandas DataFrame"):
        balans.correct([1, 2, 3], **LAYOUT)


def test_sparse_anndata_is_refused(bbbc021_df):
    ad = pytest.importorskip("anndata")
    sparse = pytest.importorskip("scipy.sparse")
    feats = [c for c in bbbc021_df.columns if not c.startswith("Metadata_")]
    adata = ad.AnnData(X=sparse.csr_matrix(bbbc021_df[feats].to_numpy()), obs=bbbc021_df[["Metadata_Week"]].set_axis(
        [str(i) for i in range(len(bbbc021_df))]), var=pd.DataFrame(index=feats))
    with pytest.raises(balans.BalansError, match="sparse"):
        balans.correct(adata, batch_col="Metadata_Week")


# ---------------------------------------------------------- logging and GIL


def test_progress_and_logs_reach_python_logging(bbbc021_arrow, caplog):
    with caplog.at_level(logging.DEBUG, logger="balans"):
        balans.correct(bbbc021_arrow, **LAYOUT)
    names = {r.name for r in caplog.records}
    assert any(n.startswith("balans") for n in names), names
    stages = [r for r in caplog.records if r.name == "balans.fit" and "fit stage" in r.getMessage()]
    assert stages, [r.getMessage() for r in caplog.records]


def test_gil_is_released_during_the_fit(bbbc021_arrow):
    done = threading.Event()
    ticks = 0

    def fit():
        balans.correct(bbbc021_arrow, **LAYOUT)
        done.set()

    t = threading.Thread(target=fit)
    t.start()
    started = time.perf_counter()
    while not done.is_set():
        ticks += 1  # pure Python: runs only while the fit does not hold the GIL
        time.sleep(0)
    t.join()
    elapsed = time.perf_counter() - started
    # A thread holding the GIL through the fit would leave this loop a few
    # iterations (switch interval 5 ms); released, it spins freely.
    assert elapsed > 0.05 and ticks > 1000, (elapsed, ticks)


# --------------------------------------------------------- fit / transform


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """Weeks 1-6 as the reference, weeks 7-10 as new plates (Parquet)."""
    d = tmp_path_factory.mktemp("split")
    import pyarrow.csv as pacsv
    import pyarrow.compute as pc

    t = pacsv.read_csv(BBBC021)
    week = t.column("Metadata_Week")
    late = pc.is_in(week, value_set=pa.array([f"Week{i}" for i in (7, 8, 9, 10)]))
    pq.write_table(t.filter(pc.invert(late)), d / "reference.parquet")
    pq.write_table(t.filter(late), d / "new.parquet")
    return d


@pytest.fixture(scope="module")
def cli_applied(cli, split):
    cli("correct", "-i", split / "reference.parquet", "-o", split / "ref_out.parquet", *CLI_LAYOUT,
        "--save-model", split / "cli_model")
    cli("apply", "--model", split / "cli_model", "-i", split / "new.parquet", "-o", split / "cli_new.parquet")
    return read(split / "cli_new.parquet")


def test_fit_transform_equals_correct_save_model_then_apply(split, cli_applied):
    model = balans.fit(pq.read_table(split / "reference.parquet"), **LAYOUT)
    assert model.batches == [f"Week{i}" for i in range(1, 7)]
    rows = model.rows
    got = model.transform(pq.read_table(split / "new.parquet"))
    assert_same_values(got, cli_applied)
    assert model.rows > rows  # the new plates are incorporated
    # Again: every plate is a replay now, with the values it got.
    assert_same_values(model.transform(pq.read_table(split / "new.parquet")), cli_applied)


def test_fit_on_dataframe_and_transform_dataframe(split, cli_applied):
    model = balans.fit(pd.read_parquet(split / "reference.parquet"), **LAYOUT)
    got = model.transform(pd.read_parquet(split / "new.parquet"))
    assert isinstance(got, pd.DataFrame)
    assert_same_values(pa.Table.from_pandas(got, preserve_index=False), cli_applied)


def test_saved_models_are_the_clis(cli, split, cli_applied, tmp_path):
    model = balans.fit(split / "reference.parquet", **LAYOUT)
    model.save(tmp_path / "py_model")
    # The files the CLI writes for the same fit.
    for f in ("model.json", "snapshot/meta.json", "snapshot/y.f32", "snapshot/manifest.json"):
        assert (tmp_path / "py_model" / f).read_bytes() == (split / "cli_model" / f).read_bytes(), f
    # The CLI applies the Python model; Python applies the CLI's.
    cli("apply", "--model", tmp_path / "py_model", "-i", split / "new.parquet", "-o", tmp_path / "a.parquet")
    assert_same_values(read(tmp_path / "a.parquet"), cli_applied)
    loaded = balans.load(split / "cli_model")
    assert loaded.features == model.features
    out = loaded.transform(split / "new.parquet", output=tmp_path / "b.parquet")
    assert (tmp_path / "b.parquet").read_bytes() == (split / "cli_new.parquet").read_bytes()
    assert out == tmp_path / "b.parquet"
    with pytest.raises(balans.BalansError, match="py_model: the directory is not empty"):
        model.save(tmp_path / "py_model")


def test_load_refuses_a_damaged_model(split, tmp_path):
    import shutil

    shutil.copytree(split / "cli_model", tmp_path / "m")
    y = tmp_path / "m" / "snapshot" / "y.f32"
    data = bytearray(y.read_bytes())
    data[0] ^= 0xFF
    y.write_bytes(bytes(data))
    with pytest.raises(balans.BalansError, match="y.f32"):
        balans.load(tmp_path / "m")


def test_transform_refuses_missing_features(split):
    model = balans.load(split / "cli_model")
    new = pq.read_table(split / "new.parquet")
    with pytest.raises(balans.BalansError, match="Cells_AreaShape_Area"):
        model.transform(new.drop_columns(["Cells_AreaShape_Area"]))


# ---------------------------------------------------------------- evaluate


def test_evaluate_returns_the_clis_figures(cli, cli_corrected, bbbc021_df, tmp_path):
    js = tmp_path / "report.json"
    cli("evaluate", "-i", cli_corrected, "--baseline", BBBC021, "--batch-col", "Metadata_Week",
        "--label-col", "Metadata_MoA", "--control", "Metadata_MoA=DMSO", "--exclude", "_Location_|_Center_",
        "--json", js)
    want = json.loads(js.read_text())
    corrected = pd.read_parquet(cli_corrected)
    got = balans.evaluate(corrected, baseline=bbbc021_df, batch_col="Metadata_Week", label_col="Metadata_MoA",
                          control="Metadata_MoA=DMSO", exclude="_Location_|_Center_")
    assert got == want
    assert "before" in got and got["before"]


# ------------------------------------------------------ folders of plate files


@pytest.fixture(scope="module")
def plate_files(split):
    """The new weeks as one Parquet file per plate, in a folder."""
    import pyarrow.compute as pc

    d = split / "plates"
    d.mkdir()
    t = pq.read_table(split / "new.parquet")
    for plate in sorted(set(t.column("Metadata_Plate").to_pylist())):
        pq.write_table(t.filter(pc.equal(t.column("Metadata_Plate"), plate)), d / f"{plate}.parquet")
    return d


def test_folder_in_folder_out_is_the_clis(cli, plate_files, tmp_path):
    cli("correct", "-i", plate_files, "-o", tmp_path / "cli", *CLI_LAYOUT)
    balans.correct(plate_files, output=tmp_path / "py", **LAYOUT)
    names = sorted(p.name for p in (tmp_path / "cli").iterdir())
    assert names == sorted(p.name for p in plate_files.iterdir())
    assert sorted(p.name for p in (tmp_path / "py").iterdir()) == names
    for n in names:
        assert (tmp_path / "py" / n).read_bytes() == (tmp_path / "cli" / n).read_bytes(), n


def test_transform_folder_is_apply_folder(cli, split, cli_applied, plate_files, tmp_path):
    cli("apply", "--model", split / "cli_model", "-i", str(plate_files / "*.parquet"), "-o", tmp_path / "cli")
    balans.load(split / "cli_model").transform(str(plate_files / "*.parquet"), output=tmp_path / "py")
    names = sorted(p.name for p in (tmp_path / "cli").iterdir())
    assert len(names) == len(list(plate_files.iterdir()))
    for n in names:
        assert (tmp_path / "py" / n).read_bytes() == (tmp_path / "cli" / n).read_bytes(), n
