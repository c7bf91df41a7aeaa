"""ecgtool index / search: the index file, exact and HNSW search, patient history, votes, change from
baseline, and the kNN functions that probe --head knn uses; on real PTB-XL and LUDB records."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from cli_examples import help_examples
from conftest import ROOT
from ecgtool.io import TableWriter, read_table
from ecgtool.io.stream import open_table
from ecgtool.retrieval import knn_class_scores, knn_scores
from ecgtool.retrieval.exact import exact_search
from ecgtool.retrieval.index import load_index

DOC = ROOT / "docs" / "retrieval.md"
PATIENT = "13619"  # PTB-XL patient with 8 ECGs among ecg_id 17-39
N_PTB = 50


def _faiss():
    return pytest.importorskip("faiss", reason="the 'retrieval' extra (faiss-cpu) is not installed")


def run(args, cwd=None, ok=True, stdin=None):
    r = subprocess.run([sys.executable, "-m", "ecgtool", *map(str, args)], cwd=cwd, capture_output=True,
                       text=True, stdin=stdin)
    if ok:
        assert r.returncode == 0, f"{args}\n{r.stderr[-3000:]}"
    return r


def write_like(src: Path, dest: Path, mask) -> None:
    """A subset of a table's rows, with its metadata."""
    t, _ = read_table(src)
    with open_table(src) as r:
        meta = r.meta
    with TableWriter(dest, t.schema, meta) as w:
        w.write(t.filter(pa.array(mask)))


def link_ptbxl(data_dir: Path, dest: Path, n: int = N_PTB) -> Path:
    """dest/ptbxl: the first n PTB-XL 100 Hz records and the database CSV, as links."""
    root = dest / "ptbxl"
    rec = root / "records100" / "00000"
    rec.mkdir(parents=True)
    src = data_dir / "ptbxl-500"
    (root / "ptbxl_database.csv").symlink_to(src / "ptbxl_database.csv")
    for i in range(1, n + 1):
        for ext in ("hea", "dat"):
            (rec / f"{i:05d}_lr.{ext}").symlink_to(src / "records100" / "00000" / f"{i:05d}_lr.{ext}")
    return root


@pytest.fixture(scope="session")
def ptb(tmp_path_factory, data_dir):
    """PTB-XL records 1-50: converted with the database joined, labelled, embedded with the default model."""
    work = tmp_path_factory.mktemp("ptb")
    link_ptbxl(data_dir, work)
    run(["convert", "ptbxl/records100/00000", "--join", "ptbxl/ptbxl_database.csv", "-o", "ptbxl.parquet"], work)
    run(["label", "ptbxl.parquet", "--scp-column", "scp_codes", "--vocab", "ptbxl-superclass", "-o",
         "labels.parquet"], work)
    run(["embed", "ptbxl.parquet", "--precision", "fp32", "-o", "all.emb.parquet"], work)
    run(["embed", "ptbxl.parquet", "--pool", "none", "--precision", "fp32", "-o", "win.parquet"], work)
    t, _ = read_table(work / "all.emb.parquet")
    num = np.array([int(r.split("_")[0]) for r in t.column("record_id").to_pylist()])
    write_like(work / "all.emb.parquet", work / "emb.parquet", num <= 40)
    write_like(work / "all.emb.parquet", work / "new_emb.parquet", num > 40)
    write_like(work / "all.emb.parquet", work / "query_emb.parquet", num <= 10)
    run(["index", "all.emb.parquet", "--label-table", "labels.parquet", "-o", "all.ecgidx"], work)
    return work


# --------------------------------------------------------------------------- kNN functions


def test_knn_class_scores_match_scikit_learn():
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(0)
    X, Q = rng.normal(size=(300, 8)), rng.normal(size=(40, 8))
    c = rng.integers(0, 3, 300)
    for metric, sk in (("cosine", "cosine"), ("l2", "euclidean")):
        for weighted, w in ((False, "uniform"), (True, "distance")):
            ours = knn_class_scores(X, c, 3, Q, k=7, metric=metric, weighted=weighted)
            ref = KNeighborsClassifier(7, weights=w, metric=sk, algorithm="brute").fit(X, c).predict_proba(Q)
            np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_exact_search_matches_scikit_learn():
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(1)
    X, Q = rng.normal(size=(500, 16)), rng.normal(size=(30, 16))
    for metric, sk in (("cosine", "cosine"), ("l2", "euclidean")):
        D, I = exact_search(X, Q, 5, metric)
        d2, i2 = NearestNeighbors(n_neighbors=5, metric=sk, algorithm="brute").fit(X).kneighbors(Q)
        np.testing.assert_array_equal(I, i2)
        np.testing.assert_allclose(D, d2, atol=1e-5)


def test_knn_scores_nan_labels_and_embeddings(caplog):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(200, 6)).astype(np.float32)
    y = np.c_[(X[:, 0] > 0), (X[:, 1] > 0)].astype(float)
    y[:100, 1] = np.nan  # label 2 unobserved on half the rows
    X[5] = np.nan  # a training row without a finite embedding
    Q = rng.normal(size=(30, 6)).astype(np.float32)
    Q[3] = np.nan
    s = knn_scores(X, y, Q, k=5)
    assert s.shape == (30, 2)
    assert np.isnan(s[3]).all() and np.isfinite(np.delete(s, 3, axis=0)).all()
    assert ((s[np.isfinite(s)] >= 0) & (s[np.isfinite(s)] <= 1)).all()
    # by hand: label 2's vote only counts neighbours where it is observed
    keep = np.isfinite(X).all(1)
    D, I = exact_search(X[keep], Q[:1], 5)
    ny = y[keep][I[0]]
    obs = np.isfinite(ny[:, 1])
    expect = ny[obs, 1].mean() if obs.any() else np.nanmean(y[keep, 1])
    assert s[0, 0] == pytest.approx(ny[:, 0].mean())
    assert s[0, 1] == pytest.approx(expect)
    assert "NaN/inf" in caplog.text
    # the vote separates the classes it was given
    assert np.mean((s[:, 0] > 0.5) == (Q[:, 0] > 0)) > 0.7


# --------------------------------------------------------------------------- the index file


def test_index_file_records_model_contract_and_provenance(ptb):
    idx = load_index(ptb / "all.ecgidx")
    with open_table(ptb / "all.emb.parquet") as r:
        meta = r.meta
    assert idx.kind == "exact" and idx.metric == "cosine" and idx.rows == N_PTB
    assert idx.model == meta.info["model"] and idx.header["contract"] == meta.info["contract"]
    assert idx.dim == meta.info["embedding"]["dim"]
    src = idx.header["sources"][0]
    assert src["path"].endswith("all.emb.parquet") and src["rows"] == N_PTB and src["history"] == meta.history
    assert idx.header["history"][-1]["command"].startswith("ecgtool index all.emb.parquet")
    for col in ("record_id", "patient_id", "recording_date", "NORM", "MI", "strat_fold"):
        assert col in idx.meta.column_names
    assert "embedding" not in idx.meta.column_names and "signal" not in idx.meta.column_names
    assert idx.date_column == "recording_date" and idx.label_names[:2] == ["NORM", "MI"]


def test_truncated_newer_and_corrupt_index_files_are_refused(ptb, tmp_path):
    data = (ptb / "all.ecgidx").read_bytes()
    cut = tmp_path / "cut.ecgidx"
    cut.write_bytes(data[: len(data) // 2])
    r = run(["search", cut, ptb / "query_emb.parquet", "-o", tmp_path / "x.parquet"], ok=False)
    assert r.returncode == 1 and "truncated" in r.stderr
    tiny = tmp_path / "tiny.ecgidx"
    tiny.write_bytes(data[:10])
    assert "truncated" in run(["search", tiny, ptb / "query_emb.parquet", "-o", tmp_path / "x.parquet"],
                              ok=False).stderr
    n = int.from_bytes(data[8:16], "little")
    header = json.loads(data[16:16 + n])
    newer = json.dumps(header | {"format_version": "2.0"}).encode()
    assert len(newer) == n  # same length: the offsets stay valid
    (tmp_path / "new.ecgidx").write_bytes(data[:16] + newer + data[16 + n:])
    r = run(["search", tmp_path / "new.ecgidx", ptb / "query_emb.parquet", "-o", tmp_path / "x.parquet"], ok=False)
    assert r.returncode == 1 and "newer" in r.stderr and "2.0" in r.stderr
    bad = bytearray(data)
    bad[-100] ^= 0xFF
    (tmp_path / "bad.ecgidx").write_bytes(bytes(bad))
    r = run(["search", tmp_path / "bad.ecgidx", ptb / "query_emb.parquet", "-o", tmp_path / "x.parquet"], ok=False)
    assert "corrupt" in r.stderr
    r = run(["search", ptb / "emb.parquet", ptb / "query_emb.parquet", "-o", tmp_path / "x.parquet"], ok=False)
    assert "not an ecgtool index" in r.stderr and "ecgtool index" in r.stderr
    assert not (tmp_path / "x.parquet").exists()


def test_append_equals_a_full_build(ptb, tmp_path):
    run(["index", ptb / "emb.parquet", "-o", tmp_path / "grown.ecgidx"])
    run(["index", ptb / "new_emb.parquet", "--append", "-o", tmp_path / "grown.ecgidx"])
    run(["index", ptb / "all.emb.parquet", "-o", tmp_path / "full.ecgidx"])
    a, b = load_index(tmp_path / "grown.ecgidx"), load_index(tmp_path / "full.ecgidx")
    assert a.rows == b.rows == N_PTB and len(a.header["sources"]) == 2
    Q = a.vectors(np.arange(N_PTB))
    np.testing.assert_array_equal(a.search(Q, 5, prepared=True)[1], b.search(Q, 5, prepared=True)[1])


def test_hnsw_index_agrees_with_exact_and_appends(ptb, tmp_path):
    _faiss()
    run(["index", ptb / "emb.parquet", "--kind", "hnsw", "-o", tmp_path / "h.ecgidx"])
    run(["index", ptb / "new_emb.parquet", "--append", "-o", tmp_path / "h.ecgidx"])
    h, e = load_index(tmp_path / "h.ecgidx"), load_index(ptb / "all.ecgidx")
    assert h.kind == "hnsw" and h.rows == N_PTB
    assert h.meta.column("record_id").to_pylist() == e.meta.column("record_id").to_pylist()
    Q = e.vectors(np.arange(N_PTB))
    Dh, Ih = h.search(Q, 10, prepared=True)
    De, Ie = e.search(Q, 10, prepared=True)
    recall = np.mean([len(set(Ih[i]) & set(Ie[i])) / 10 for i in range(N_PTB)])
    assert recall >= 0.95
    np.testing.assert_allclose(Dh[:, 0], De[:, 0], atol=1e-5)
    # l2: the Euclidean distance, as exact search reports it
    run(["index", ptb / "all.emb.parquet", "--kind", "hnsw", "--metric", "l2", "-o", tmp_path / "l2.ecgidx"])
    run(["index", ptb / "all.emb.parquet", "--kind", "exact", "--metric", "l2", "-o", tmp_path / "l2e.ecgidx"])
    hl, el = load_index(tmp_path / "l2.ecgidx"), load_index(tmp_path / "l2e.ecgidx")
    X = np.stack([np.asarray(v, np.float32) for v in read_table(ptb / "all.emb.parquet")[0].column("embedding").to_pylist()])
    np.testing.assert_allclose(hl.search(X[:5], 3)[0], el.search(X[:5], 3)[0], rtol=1e-4, atol=1e-5)
    d = np.linalg.norm(X[0] - X[el.search(X[:1], 2)[1][0, 1]])
    assert el.search(X[:1], 2)[0][0, 1] == pytest.approx(d, rel=1e-4)


def _renamed(src: Path, dest: Path, model: str | None = None, dim: int | None = None, nan_rows=()) -> None:
    t, _ = read_table(src)
    with open_table(src) as r:
        meta = r.meta
    if model:
        meta = meta.derive(model=model)
    X = np.stack([np.asarray(v, np.float32) for v in t.column("embedding").to_pylist()])
    if dim:
        X = X[:, :dim]
    for i in nan_rows:
        X[i] = np.nan
    emb = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), X.shape[1])
    t = t.set_column(t.column_names.index("embedding"), "embedding", emb)
    with TableWriter(dest, t.schema, meta) as w:
        w.write(t)


def test_other_model_or_dimension_is_refused_naming_both(ptb, tmp_path):
    idx = load_index(ptb / "all.ecgidx")
    _renamed(ptb / "new_emb.parquet", tmp_path / "other.parquet", model="ecgfm-base")
    r = run(["index", tmp_path / "other.parquet", "--append", "-o", ptb / "all.ecgidx"], ok=False)
    assert r.returncode == 1 and "ecgfm-base" in r.stderr and repr(idx.model) in r.stderr
    r = run(["search", ptb / "all.ecgidx", tmp_path / "other.parquet", "-o", tmp_path / "x.parquet"], ok=False)
    assert r.returncode == 1 and "ecgfm-base" in r.stderr and repr(idx.model) in r.stderr
    _renamed(ptb / "new_emb.parquet", tmp_path / "short.parquet", dim=64)
    r = run(["search", ptb / "all.ecgidx", tmp_path / "short.parquet", "-o", tmp_path / "x.parquet"], ok=False)
    assert r.returncode == 1 and "dimension 64" in r.stderr and f"dimension {idx.dim}" in r.stderr
    assert load_index(ptb / "all.ecgidx").rows == N_PTB  # the refused append left the index as it was


def test_nan_embeddings_are_skipped_and_named(ptb, tmp_path):
    _renamed(ptb / "all.emb.parquet", tmp_path / "nan.parquet", nan_rows=(2, 7))
    r = run(["index", tmp_path / "nan.parquet", "-o", tmp_path / "nan.ecgidx"])
    assert "2 row(s) with NaN/inf embeddings skipped: 00003_lr, 00008_lr" in r.stderr
    assert load_index(tmp_path / "nan.ecgidx").rows == N_PTB - 2
    r = run(["search", ptb / "all.ecgidx", tmp_path / "nan.parquet", "-k", "2", "-o", tmp_path / "nb.parquet"])
    assert "00003_lr, 00008_lr" in r.stderr
    t, _ = read_table(tmp_path / "nb.parquet")
    assert t.num_rows == 2 * (N_PTB - 2) and "00003_lr" not in set(t.column("query_record_id").to_pylist())


# --------------------------------------------------------------------------- search


def test_search_neighbours_exclude_self_and_k_larger_than_index(ptb, tmp_path):
    run(["search", ptb / "all.ecgidx", ptb / "query_emb.parquet", "-k", "3", "-o", tmp_path / "a.parquet"])
    t, meta = read_table(tmp_path / "a.parquet")
    assert meta.kind == "neighbours" and t.num_rows == 30
    first = t.filter(pa.array(np.array(t.column("rank").to_pylist()) == 1))
    assert first.column("record_id").to_pylist() == first.column("query_record_id").to_pylist()  # itself
    assert np.allclose(first.column("distance").to_numpy(), 0, atol=1e-5)
    run(["search", ptb / "all.ecgidx", ptb / "query_emb.parquet", "-k", "3", "--exclude-self", "-o",
         tmp_path / "b.parquet"])
    b, _ = read_table(tmp_path / "b.parquet")
    assert b.num_rows == 30
    assert not any(q == r for q, r in zip(b.column("query_record_id").to_pylist(), b.column("record_id").to_pylist()))
    # the neighbours are the exact ones, with their metadata and labels
    X = np.stack([np.asarray(v, np.float32) for v in read_table(ptb / "all.emb.parquet")[0].column("embedding").to_pylist()])
    D, I = exact_search(X, X[:10], 4)
    ids = read_table(ptb / "all.emb.parquet")[0].column("record_id").to_pylist()
    assert b.column("record_id").to_pylist() == [ids[i] for row in I[:, 1:] for i in row]
    np.testing.assert_allclose(b.column("distance").to_numpy(), D[:, 1:].reshape(-1), atol=1e-5)
    assert {"patient_id", "NORM", "scp_codes", "recording_date"} <= set(b.column_names)
    r = run(["search", ptb / "all.ecgidx", ptb / "query_emb.parquet", "-k", "500", "-o", tmp_path / "c.parquet"])
    assert "more than the 50 rows" in r.stderr
    assert read_table(tmp_path / "c.parquet")[0].num_rows == 10 * N_PTB


def test_same_patient_history_ordered_by_date(ptb, tmp_path):
    q = ptb / "ptbxl" / "records100" / "00000" / "00039_lr.hea"
    run(["search", ptb / "all.ecgidx", q, "--same-patient", "--exclude-self", "-o", tmp_path / "h.parquet"])
    t, _ = read_table(tmp_path / "h.parquet")
    assert set(t.column("patient_id").to_pylist()) == {PATIENT}
    assert t.column("record_id").to_pylist() == ["00017_lr", "00018_lr", "00020_lr", "00023_lr", "00026_lr",
                                                 "00028_lr", "00034_lr"]
    dates = t.column("recording_date").to_pylist()
    assert dates == sorted(dates)
    # ranks are by distance
    d = np.array(t.column("distance").to_pylist())
    assert list(np.array(t.column("rank").to_pylist())[np.argsort(d)]) == list(range(1, 8))


def test_patient_without_other_ecgs_gives_an_empty_result_and_a_note(ptb, tmp_path):
    q = ptb / "ptbxl" / "records100" / "00000" / "00001_lr.hea"  # patient 15709: one ECG among these
    r = run(["search", ptb / "all.ecgidx", q, "--same-patient", "--exclude-self", "-o", tmp_path / "e.parquet"])
    assert r.returncode == 0 and "has no other ECG in the index" in r.stderr
    assert read_table(tmp_path / "e.parquet")[0].num_rows == 0


def test_vote_and_agreement_with_the_model(ptb, tmp_path):
    rec = ptb / "ptbxl" / "records100" / "00000"
    r = run(["search", ptb / "all.ecgidx", rec, "--exclude-self", "-k", "5", "--vote", "NORM,MI,STTC,CD,HYP",
             "-o", tmp_path / "v.parquet"])
    t, meta = read_table(tmp_path / "v.parquet")
    assert meta.kind == "votes" and t.num_rows == N_PTB
    assert re.search(r"kNN vote and model agree on NORM for \d+ of \d+ queries", r.stderr)
    s = np.array(t.column("knn_NORM").to_pylist(), dtype=float)
    # by hand: the share of NORM among the 5 nearest other records
    lab, _ = read_table(ptb / "labels.parquet")
    norm = dict(zip(lab.column("record_id").to_pylist(), lab.column("NORM").to_pylist()))
    run(["search", ptb / "all.ecgidx", ptb / "all.emb.parquet", "--exclude-self", "-k", "5", "-o", tmp_path / "n.parquet"])
    nb, _ = read_table(tmp_path / "n.parquet")
    q0 = t.column("query_record_id")[0].as_py()
    votes = [norm[x] for qq, x in zip(nb.column("query_record_id").to_pylist(), nb.column("record_id").to_pylist())
             if qq == q0 and norm[x] is not None]
    assert s[0] == pytest.approx(np.mean(votes))
    p = np.array(t.column("model_NORM").to_pylist(), dtype=float)
    assert ((p >= 0) & (p <= 1)).all()
    assert "agree_NORM" in t.column_names
    r = run(["search", ptb / "all.ecgidx", ptb / "query_emb.parquet", "--vote", "nope", "-o", tmp_path / "w.parquet"],
            ok=False)
    assert r.returncode == 2 and "no column 'nope'" in r.stderr


def test_compare_with_the_latest_earlier_ecg(ptb, tmp_path):
    q = ptb / "ptbxl" / "records100" / "00000" / "00039_lr.hea"
    run(["search", ptb / "all.ecgidx", q, "--same-patient", "--compare", "--png", tmp_path / "figs", "-o",
         tmp_path / "c.parquet"])
    t, meta = read_table(tmp_path / "c.parquet")
    row = t.to_pylist()[0]
    assert row["baseline_record_id"] == "00034_lr" and row["patient_id"] == PATIENT
    assert row["days_between"] == pytest.approx(6.03, abs=0.01)
    idx = load_index(ptb / "all.ecgidx")
    ids = idx.meta.column("record_id").to_pylist()
    v = idx.vectors([ids.index("00039_lr"), ids.index("00034_lr")])
    assert row["distance"] == pytest.approx(1 - float(v[0] @ v[1]), abs=1e-4)
    pred_q = run(["predict", q, "--precision", "fp32", "-o", tmp_path / "pq.parquet"])
    pred_b = run(["predict", ptb / "ptbxl" / "records100" / "00000" / "00034_lr.hea", "--precision", "fp32", "-o", tmp_path / "pb.parquet"])
    assert pred_q and pred_b
    pq, pb = read_table(tmp_path / "pq.parquet")[0], read_table(tmp_path / "pb.parquet")[0]
    for name in meta.info["label_names"]:
        assert row[f"change_{name}"] == pytest.approx(pq.column(name)[0].as_py() - pb.column(name)[0].as_py(), abs=1e-4)
    png = Path(row["png"])
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 50_000
    # the first ECG of the patient has no earlier one: empty, with a note, exit 0
    r = run(["search", ptb / "all.ecgidx", ptb / "ptbxl" / "records100" / "00000" / "00017_lr.hea", "--same-patient",
             "--compare", "-o", tmp_path / "none.parquet"])
    assert "no ECG dated before" in r.stderr and read_table(tmp_path / "none.parquet")[0].num_rows == 0


def test_readable_list_on_a_terminal(ptb, monkeypatch, capsys):
    from ecgtool.cli.search import _print_neighbours

    idx = load_index(ptb / "all.ecgidx")
    from ecgtool.retrieval.search import SearchOptions, search

    with open_table(ptb / "query_emb.parquet") as r:
        search(r, idx, str(ptb / "term.arrow"), index_name="all.ecgidx", src_name="q",
               opts=SearchOptions(k=2, exclude_self=True), fmt="arrow")
    _print_neighbours(str(ptb / "term.arrow"), False, idx)
    out = capsys.readouterr().out
    assert "00001_lr: nearest records" in out and "  1. " in out and "d=0." in out and "patient " in out
    assert "labels: " in out and "1984-11-09" in out


# --------------------------------------------------------------------------- retrieval on real windows


@pytest.mark.slow
def test_windows_find_their_own_record(tmp_path, data_dir):
    """The nearest other window of a window (the default model's 10 s windows of 30 s CinC 2017 strips, three per
    record) is, most of the time, a window of the same record."""
    cinc = tmp_path / "cinc"
    cinc.mkdir()
    for hea in sorted((data_dir / "cinc2017").glob("A0*.hea"))[:40]:
        for ext in ("hea", "mat"):
            (cinc / f"{hea.stem}.{ext}").symlink_to(hea.with_suffix(f".{ext}"))
    run(["embed", cinc, "--pool", "none", "--precision", "fp32", "-o", tmp_path / "cinc.win.parquet"])
    emb = tmp_path / "cinc.win.parquet"
    run(["index", emb, "-o", tmp_path / "cinc.ecgidx"])
    run(["search", tmp_path / "cinc.ecgidx", emb, "-k", "1", "--exclude-self", "-o", tmp_path / "cinc.nn.parquet"])
    t, _ = read_table(tmp_path / "cinc.nn.parquet")
    q, r = t.column("query_record_id").to_pylist(), t.column("record_id").to_pylist()
    qs, rs = t.column("query_segment").to_pylist(), t.column("segment").to_pylist()
    assert all(a != b or x != y for a, b, x, y in zip(q, r, qs, rs))  # never the window itself
    rate = np.mean([a == b for a, b in zip(q, r)])
    assert rate > 0.5, rate


# --------------------------------------------------------------------------- examples


def _bin_env():
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


@pytest.fixture
def examples_dir(ptb, tmp_path):
    for name in ("emb.parquet", "new_emb.parquet", "query_emb.parquet", "labels.parquet", "ptbxl.parquet"):
        (tmp_path / name).symlink_to(ptb / name)
    (tmp_path / "ptbxl").symlink_to(ptb / "ptbxl")
    return tmp_path


def test_help_examples_run_as_written(examples_dir):
    _faiss()
    lines = help_examples("index") + help_examples("search")
    assert len(lines) >= 8
    for line in lines:
        r = subprocess.run(["bash", "-euo", "pipefail", "-c", line], cwd=examples_dir, capture_output=True,
                           env=_bin_env())  # a table may come on stdout: bytes
        assert r.returncode == 0, f"{line}\n{r.stderr.decode(errors='replace')[-2000:]}"
    assert any(p.suffix == ".png" for p in (examples_dir / "figs").iterdir())


def test_docs_examples_run_as_written(tmp_path, data_dir):
    link_ptbxl(data_dir, tmp_path)
    new = tmp_path / "new_ecgs"  # stands in for the user's new ECGs: two PTB-XL records not indexed before
    new.mkdir()
    for i in (51, 52):
        for ext in ("hea", "dat"):
            (new / f"{i:05d}_lr.{ext}").symlink_to(data_dir / "ptbxl-500" / "records100" / "00000" / f"{i:05d}_lr.{ext}")
    text = DOC.read_text(encoding="utf-8")
    parts = re.split(r"```(sh|text|python)\n(.*?)```", text, flags=re.S)
    blocks = [(parts[i], parts[i + 1]) for i in range(1, len(parts) - 1, 3)]
    assert sum(lang == "sh" for lang, _ in blocks) >= 4 and any(lang == "text" for lang, _ in blocks)
    last = None
    scope: dict = {}
    for lang, body in blocks:
        if lang == "sh":
            r = subprocess.run(["bash", "-euo", "pipefail", "-c", body], cwd=tmp_path, capture_output=True,
                               text=True, env=_bin_env())
            assert r.returncode == 0, f"{body}\n{r.stderr[-2000:]}"
            last = r.stdout
        elif lang == "text":  # a listing shown in the doc is what the command before it prints
            assert body.strip() in last, f"the doc shows\n{body}\nthe command printed\n{last}"
        else:
            cwd = os.getcwd()
            os.chdir(tmp_path)
            try:
                exec(compile(body, str(DOC), "exec"), scope)  # noqa: S102 - the documentation's own examples
            finally:
                os.chdir(cwd)
    assert load_index(tmp_path / "ptbxl.ecgidx").rows == N_PTB + 2
    assert any(p.suffix == ".png" for p in (tmp_path / "figs").iterdir())
