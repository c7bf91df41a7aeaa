"""ecgtool compare: the paired bootstrap (same resamples as probe), DeLong's test, BCa, bad input, and the
default model's predictions against a linear probe on real PTB-XL fold 10 records."""

from __future__ import annotations

import csv
import json

import numpy as np
import pyarrow as pa
import pytest

from ecgtool.analysis import compare as cp
from ecgtool.analysis import metrics as mt

SUPER = ["NORM", "MI", "STTC", "CD", "HYP"]


def _run(args):
    from typer.testing import CliRunner

    from ecgtool.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


# --------------------------------------------------------------------------- the engine


def test_paired_bootstrap_uses_probes_resamples_exactly():
    """With the same seed and record order, every model's bootstrap values are those of metrics.evaluate (the
    probe's), for masked labels and tied scores alike."""
    rng = np.random.default_rng(0)
    n, L = 700, 3
    Y = rng.random((n, L)) < np.array([0.1, 0.3, 0.5])
    M = rng.random((n, L)) < 0.85
    S1 = np.round(rng.normal(size=(n, L)) + Y, 1)  # many ties, also between the classes
    S2 = rng.normal(size=(n, L)) + 0.4 * Y
    P1, P2 = S1 >= 0.5, S2 >= 0.2
    res = cp.paired_bootstrap(Y, M, [S1, S2], [P1, P2], [np.ones(L, bool)] * 2, n_boot=300, seed=4)
    for k, (S, P) in enumerate(((S1, P1), (S2, P2))):
        ev = mt.evaluate(Y, S, M, preds=P, n_boot=300, seed=4)
        for m in ("auroc", "f1"):
            assert np.array_equal(res["point"][k][m], ev["point"][m])
            assert np.allclose(res["boot"][k][m], ev["boot"][m], equal_nan=True, atol=1e-12, rtol=0)
        assert np.allclose(res["boot"][k]["auprc"], ev["boot"]["auprc"], equal_nan=True, atol=1e-6, rtol=0)
        assert np.array_equal(res["point"][k]["auprc"], ev["point"]["auprc"])


def test_prefix_sums_are_exact():
    rng = np.random.default_rng(1)
    for m in (0, 1, 15, 16, 17, 1000, 1001):
        X = rng.integers(0, 5, (m, 7)).astype(np.float32)
        want = np.concatenate([np.zeros((1, 7), np.float32), np.cumsum(X, axis=0)])
        assert np.array_equal(cp.prefix_sums(X), want)


def test_delong_variance_is_the_structural_components_by_definition():
    rng = np.random.default_rng(2)
    y = rng.random(80) < 0.4
    a = np.round(rng.normal(size=80) + y, 1)
    b = rng.normal(size=80) + 0.5 * y
    aucs, cov = cp.delong(y, [a, b])
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)

    def psi(x, yv):
        return 1.0 if x > yv else 0.5 if x == yv else 0.0

    V10 = np.array([[np.mean([psi(s[i], s[j]) for j in neg]) for i in pos] for s in (a, b)])
    V01 = np.array([[np.mean([psi(s[i], s[j]) for i in pos]) for j in neg] for s in (a, b)])
    assert aucs == pytest.approx([mt.auroc(y, a), mt.auroc(y, b)])
    assert aucs == pytest.approx(V10.mean(axis=1))
    assert cov == pytest.approx(np.cov(V10) / pos.size + np.cov(V01) / neg.size)
    t = cp.delong_test(y, a, a)
    assert t["p"] == 1.0
    # the same test from the placement values the paired engine keeps (one sort per label and model)
    eng = cp.paired_bootstrap(y[:, None], np.ones((80, 1), bool), [a[:, None], b[:, None]],
                              [a[:, None] > 0, b[:, None] > 0], [np.ones(1, bool)] * 2, n_boot=0)["engine"]
    got = cp.delong_from(y, eng.placements[(0, 0)], eng.placements[(0, 1)])
    want = cp.delong_test(y, a, b)
    assert got["z"] == pytest.approx(want["z"]) and got["p"] == pytest.approx(want["p"])


def test_delong_test_holds_its_level_and_finds_a_real_difference():
    rng = np.random.default_rng(3)
    p_null, p_alt = [], []
    for _ in range(300):
        y = rng.random(200) < 0.3
        common = rng.normal(size=200)
        a = common + y + rng.normal(size=200)
        b = common + y + rng.normal(size=200)
        p_null.append(cp.delong_test(y, a, b)["p"])
        c = common + 2.5 * y + rng.normal(size=200)
        p_alt.append(cp.delong_test(y, c, b)["p"])
    assert 0.02 <= np.mean(np.array(p_null) < 0.05) <= 0.09
    assert np.mean(np.array(p_alt) < 0.05) > 0.9


# --------------------------------------------------------------------------- interval hygiene


def test_bca_agrees_with_scipy_on_a_skewed_statistic():
    from scipy.stats import bootstrap

    rng = np.random.default_rng(5)
    x = rng.exponential(size=60)
    B = 20000
    idx = rng.integers(0, x.size, (B, x.size))
    boot = x[idx].mean(axis=1)
    jack = (x.sum() - x) / (x.size - 1)
    ours = mt.bca_ci(boot, x.mean(), jack, 0.95)
    ref = bootstrap((x,), np.mean, n_resamples=B, method="BCa", random_state=6).confidence_interval
    assert ours[0] == pytest.approx(ref.low, abs=0.02) and ours[1] == pytest.approx(ref.high, abs=0.02)
    # BCa moves the interval towards the long tail relative to the percentile one
    pct = mt.percentile_ci(boot, 0.95)
    assert ours[1] - pct[1] > 0 and ours[0] - pct[0] > 0


def test_interval_that_excludes_its_point_is_replaced_and_said_so():
    """A percentile interval that misses its estimate: BCa is tried, and (|a| <= 1/6) it misses it too, so the
    normal interval (estimate ± z SD, clipped) is reported, with the method and the reason."""
    rng = np.random.default_rng(7)
    point = 0.80
    boot = np.r_[point + 0.02 + rng.exponential(0.02, 985), point - rng.exponential(0.01, 15)]  # 1.5% below
    jack = point + rng.exponential(0.003, 100) * rng.choice([-1, 1], 100)
    pct = mt.percentile_ci(boot)
    assert not pct[0] <= point <= pct[1]
    bca = mt.bca_ci(boot, point, jack)
    assert bca is not None and not bca[0] <= point <= bca[1]
    s = mt.summarise(point, boot, 0.95, None, jack)
    assert s["ci_method"] == "normal" and s["ci"][0] <= point <= s["ci"][1]
    assert "percentile interval" in s["ci_note"] and "BCa interval" in s["ci_note"]
    sd = boot.std(ddof=1)
    assert s["ci"] == pytest.approx([point - 1.959964 * sd, min(1.0, point + 1.959964 * sd)], abs=1e-6)
    s = mt.summarise(0.99, np.full(500, 0.995) + rng.normal(0, 0.001, 500), 0.95, None, jack)
    assert s["ci"][1] <= 1.0  # clipped to the metric's range
    # the ordinary case stays percentile
    s = mt.summarise(0.5, rng.normal(0.5, 0.01, 1000), 0.95)
    assert s["ci_method"] == "percentile" and "ci_note" not in s


def test_jackknife_acceleration_is_bounded_by_one_sixth():
    """Why BCa cannot rescue an estimate outside the percentile interval: |sum d^3| <= (sum d^2)^1.5."""
    rng = np.random.default_rng(8)
    for _ in range(200):
        d = rng.standard_t(1.5, size=int(rng.integers(3, 300)))
        d = d - d.mean()
        a = np.sum(d ** 3) / (6 * np.sum(d ** 2) ** 1.5)
        assert abs(a) <= 1 / 6 + 1e-12


# --------------------------------------------------------------------------- real data


def _features(data_dir):
    from test_probe import _ptbxl_features

    ids, X, labels, meta = _ptbxl_features(data_dir)
    return [f"{int(i):05d}_lr" for i in ids], X, meta


@pytest.fixture(scope="module")
def ptbxl(data_dir, tmp_path_factory):
    """Labels of ptbxl-500 (ecgtool label on the converted records), the default model's predictions on the
    records of folds 9 and 10, and a linear probe report on a feature map of all 500 records (test fold 10)."""
    from ecgtool.io import TableMeta, write_table

    out = tmp_path_factory.mktemp("cmp")
    root = data_dir / "ptbxl-500"
    db = root / "ptbxl_database.csv"
    rec = out / "rec.parquet"
    assert _run(["convert", root / "records100", "--join", db, "-o", rec]).exit_code == 0
    assert _run(["label", rec, "-o", out / "labels.parquet"]).exit_code == 0
    rows = list(csv.DictReader(open(db, newline="")))
    folds = [str(root / (r["filename_lr"] + ".hea")) for r in rows if r["strat_fold"] in ("9", "10")]
    rec10 = out / "rec9-10.parquet"
    assert _run(["convert", *folds, "--join", db, "-o", rec10]).exit_code == 0
    r = _run(["predict", rec10, "-o", out / "pred.parquet"])
    assert r.exit_code == 0, r.output
    ids, X, meta = _features(data_dir)
    emb = pa.table({"record_id": ids, "embedding": pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), X.shape[1]),
                    "strat_fold": meta["strat_fold"]})
    write_table(out / "emb.parquet", emb, TableMeta(kind="embeddings"))
    r = _run(["probe", out / "emb.parquet", "-l", out / "labels.parquet", "--fold-column", "strat_fold",
              "--report", out / "probe.json"])
    assert r.exit_code == 0, r.output
    return out


def test_compare_refuses_different_records_and_lists_left_out_labels(ptbxl):
    r = _run(["compare", ptbxl / "pred.parquet", ptbxl / "probe.json", "-l", ptbxl / "labels.parquet"])
    assert r.exit_code == 1
    # predictions on folds 9 and 10 (147 records), the probe's test split is fold 10 (66 records)
    assert "different records" in r.stderr and "147 records" in r.stderr and "66 shared" in r.stderr
    assert "--intersect" in r.stderr
    rep = ptbxl / "cmp.json"
    r = _run(["compare", ptbxl / "pred.parquet", ptbxl / "probe.json", "-l", ptbxl / "labels.parquet",
              "--intersect", "--report", rep, "--figure", ptbxl / "forest.png"])
    assert r.exit_code == 0, r.output
    out = json.loads(rep.read_text())
    assert out["labels"] == SUPER
    assert out["records"]["labels_left_out"] == {"default.safetensors": ["normal", "AF", "other rhythm", "noisy"]}
    assert "left out: default.safetensors: normal, AF, other rhythm, noisy" in r.stderr
    assert (ptbxl / "forest.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_aurocs_equal_each_models_own_numbers(ptbxl):
    from ecgtool.io import read_table

    rep = ptbxl / "cmp2.json"
    r = _run(["compare", ptbxl / "probe.json", ptbxl / "pred.parquet", "-l", ptbxl / "labels.parquet",
              "--intersect", "--report", rep])
    assert r.exit_code == 0, r.output
    out = json.loads(rep.read_text())
    probe = json.loads((ptbxl / "probe.json").read_text())
    assert out["n_records"] == len(probe["test_predictions"]["record_ids"])
    m_probe, m_pred = out["models"]
    for name in SUPER:
        assert m_probe["per_label"][name]["auroc"]["value"] == probe["metrics"]["per_label"][name]["auroc"]["value"]
        assert m_probe["per_label"][name]["f1"]["value"] == pytest.approx(
            probe["metrics"]["per_label"][name]["f1"]["value"], abs=1e-12)
    assert m_probe["macro"]["auroc"]["value"] == pytest.approx(probe["metrics"]["macro"]["auroc"]["value"], abs=1e-12)
    # the prediction table's AUROC on the compared (fold-10) records, directly from its columns and the labels
    compared = set(probe["test_predictions"]["record_ids"])
    pred, _ = read_table(ptbxl / "pred.parquet")
    lab, _ = read_table(ptbxl / "labels.parquet")
    truth = dict(zip(lab.column("record_id").to_pylist(), lab.select(SUPER).to_pylist()))
    for name in SUPER:
        ys, ss = [], []
        for rid, p in zip(pred.column("record_id").to_pylist(), pred.column(name).to_pylist()):
            v = truth[rid][name]
            if v is not None and rid in compared:
                ys.append(v)
                ss.append(p)
        assert m_pred["per_label"][name]["auroc"]["value"] == pytest.approx(mt.auroc(np.array(ys) > 0, np.array(ss)),
                                                                            abs=1e-12)
    d = out["differences"][0]
    assert d["model"] == m_pred["name"] and d["reference"] == m_probe["name"]
    for name in SUPER:
        e = d["per_label"][name]["auroc"]
        want = m_pred["per_label"][name]["auroc"]["value"] - m_probe["per_label"][name]["auroc"]["value"]
        assert e["value"] == pytest.approx(want, abs=1e-12)
        assert e["ci"][0] <= e["value"] <= e["ci"][1]
        assert 0.0 <= e["delong"]["p"] <= 1.0 and e["delong"]["se"] > 0
    # every interval contains its point estimate
    for m in out["models"] + out["differences"]:
        for e in list(m["per_label"].values()) + [m["macro"]]:
            for k in ("auroc", "auprc", "f1"):
                if e[k]["value"] is not None and e[k].get("ci"):
                    assert e[k]["ci"][0] <= e[k]["value"] <= e[k]["ci"][1]
    assert "possible leakage" in r.stderr and "PTB-XL" in r.stderr


def test_compare_bad_input(ptbxl, tmp_path):
    from ecgtool.io import read_table, write_table

    r = _run(["compare", ptbxl / "pred.parquet"])
    assert r.exit_code == 2 and "needs 2 or more" in r.stderr
    # a table whose label names differ: compared on the shared labels, the rest listed
    t, meta = read_table(ptbxl / "pred.parquet")
    t = t.rename_columns(["MI_renamed" if c == "MI" else c for c in t.column_names])
    meta.info["label_names"] = ["MI_renamed" if n == "MI" else n for n in meta.info["label_names"]]
    write_table(tmp_path / "renamed.parquet", t, meta)
    rep = tmp_path / "c.json"
    r = _run(["compare", ptbxl / "pred.parquet", tmp_path / "renamed.parquet", "-l", ptbxl / "labels.parquet",
              "--report", rep, "--n-boot", "50"])
    assert r.exit_code == 0, r.output
    out = json.loads(rep.read_text())
    assert out["labels"] == ["NORM", "STTC", "CD", "HYP"]
    assert out["records"]["labels_without_truth"] == ["normal", "AF", "other rhythm", "noisy"]
    assert "has no truth for normal, AF, other rhythm, noisy: left out" in r.stderr
    assert "MI" in out["records"]["labels_left_out"]["default.safetensors"]
    assert "MI_renamed" in out["records"]["labels_left_out"]["default.safetensors (2)"]
    # prediction tables carry no truth
    r = _run(["compare", ptbxl / "pred.parquet", tmp_path / "renamed.parquet"])
    assert r.exit_code == 2 and "-l LABELS" in r.stderr
    # no shared record
    t2 = t.set_column(0, "record_id", pa.array([f"x{i}" for i in range(t.num_rows)]))
    write_table(tmp_path / "other.parquet", t2, meta)
    r = _run(["compare", ptbxl / "pred.parquet", tmp_path / "other.parquet", "-l", ptbxl / "labels.parquet"])
    assert r.exit_code == 1 and "share no record_id" in r.stderr
