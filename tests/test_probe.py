"""ecgtool probe: metrics, bootstrap, calibration, splits, bad input, CLI end to end, real PTB-XL data."""

from __future__ import annotations

import ast
import csv
import json
import math

import numpy as np
import pyarrow as pa
import pytest

from ecgtool.evaluation import calibration as cal
from ecgtool.analysis import metrics as mt
from ecgtool.analysis import probe as pr
from ecgtool.io import TableMeta, write_table

SUPERCLASSES = ["NORM", "MI", "STTC", "CD", "HYP"]


# --------------------------------------------------------------------------- helpers


def _emb_table(ids, X, **cols) -> pa.Table:
    X = np.asarray(X, dtype=np.float32)
    emb = pa.FixedSizeListArray.from_arrays(pa.array(X.ravel(), type=pa.float32()), X.shape[1])
    return pa.table({"record_id": pa.array([str(i) for i in ids]), "embedding": emb, **cols})


def _synthetic(n=1200, D=16, L=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, D)).astype(np.float32)
    W = rng.normal(size=(D, L))
    Y = (rng.random((n, L)) < 1 / (1 + np.exp(-(X @ W - 0.5)))).astype(int)
    return rng, X, Y


# --------------------------------------------------------------------------- metrics against scikit-learn


def test_metrics_match_sklearn_on_random_data():
    from sklearn.metrics import average_precision_score, f1_score, precision_recall_curve, recall_score, roc_auc_score

    rng = np.random.default_rng(1)
    for trial in range(5):
        n = int(rng.integers(20, 400))
        y = rng.random(n) < rng.uniform(0.1, 0.6)
        y[0], y[1] = True, False
        s = rng.normal(size=n) + y * rng.uniform(0, 2)
        if trial % 2:
            s = np.round(s, 1)  # ties
        assert mt.auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert mt.auprc(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
        t = float(np.median(s))
        got = mt.at_threshold(y, s, t)
        assert got["f1"] == pytest.approx(f1_score(y, s >= t))
        assert got["sensitivity"] == pytest.approx(recall_score(y, s >= t))
        assert got["specificity"] == pytest.approx(recall_score(~y, s < t))
        # weighted = repeated samples
        w = rng.integers(0, 3, n).astype(float)
        w[0] = w[1] = 1
        idx = np.repeat(np.arange(n), w.astype(int))
        assert mt.auroc_weighted(y, s, w[None])[0] == pytest.approx(roc_auc_score(y[idx], s[idx]))
        assert mt.auprc_weighted(y, s, w[None])[0] == pytest.approx(average_precision_score(y[idx], s[idx]))
        # threshold choice = the best F1 over the PR curve
        t = mt.choose_threshold(y, s, "f1")
        p, r, _ = precision_recall_curve(y, s)
        best = np.nanmax(2 * p * r / np.where(p + r > 0, p + r, np.nan))
        assert mt.at_threshold(y, s, t)["f1"] == pytest.approx(best)


def test_calibration_metrics_match_sklearn():
    from sklearn.metrics import brier_score_loss, log_loss

    rng = np.random.default_rng(2)
    y = rng.random(500) < 0.3
    p = np.clip(rng.random(500), 1e-6, 1 - 1e-6)
    assert mt.brier(y, p) == pytest.approx(brier_score_loss(y, p))
    assert mt.log_loss(y, p) == pytest.approx(log_loss(y, p))
    # ECE by hand on 2 bins
    p2 = np.array([0.1, 0.2, 0.8, 0.9])
    y2 = np.array([0, 1, 1, 1])
    assert mt.ece(y2, p2, n_bins=2) == pytest.approx((abs(0.15 - 0.5) * 2 + abs(0.85 - 1) * 2) / 4)


def test_bootstrap_ci_contains_point_and_narrows_with_n():
    rng = np.random.default_rng(3)
    widths = []
    for n in (100, 1000, 5000):
        y = rng.random(n) < 0.3
        s = rng.normal(size=n) + y
        ev = mt.evaluate(y[:, None], s[:, None], n_boot=300, seed=0, thresholds=[0.5])
        for k in mt.ALL_METRICS:
            point = ev["point"][k][0]
            lo, hi = mt.percentile_ci(ev["boot"][k][:, 0])
            assert lo <= point <= hi, (k, n)
        lo, hi = mt.percentile_ci(ev["boot"]["auroc"][:, 0])
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]
    # same distribution as a plain resampling loop (different draws, close quantiles)
    from sklearn.metrics import roc_auc_score

    y = rng.random(300) < 0.4
    s = rng.normal(size=300) + y
    loop = mt.bootstrap_loop(y, s, roc_auc_score, 400, seed=5)
    vec = mt.evaluate(y[:, None], s[:, None], n_boot=400, seed=6)["boot"]["auroc"][:, 0]
    assert abs(np.std(loop) - np.std(vec)) < 0.3 * np.std(loop)


def test_temperature_scaling_lowers_nll_on_miscalibrated_set():
    rng = np.random.default_rng(4)
    z_true = rng.normal(scale=2.0, size=4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-z_true))).astype(int)
    z = 3.0 * z_true  # over-confident logits
    T = cal.fit_temperature(z[:2000], y[:2000])
    assert T == pytest.approx(3.0, rel=0.2)
    before = cal.nll_binary(z[2000:], y[2000:])
    after = cal.nll_binary(z[2000:], y[2000:], T)
    assert after < before - 0.05
    p_before, p_after = cal.apply_temperature(z[2000:], None), cal.apply_temperature(z[2000:], T)
    assert mt.ece(y[2000:], p_after) < mt.ece(y[2000:], p_before)
    # multi-class
    Z = rng.normal(size=(3000, 4)) * 2
    yk = np.array([rng.choice(4, p=np.exp(r) / np.exp(r).sum()) for r in Z])
    Tk = cal.fit_temperature(0.4 * Z, yk, multiclass=True)
    assert Tk == pytest.approx(0.4, rel=0.2)
    assert cal.nll_multiclass(0.4 * Z, yk, Tk) < cal.nll_multiclass(0.4 * Z, yk) - 0.05
    assert cal.fit_temperature(z, np.ones_like(y)) is None


def test_joint_logistic_matches_sklearn():
    from sklearn.linear_model import LogisticRegression

    rng, X, Y = _synthetic(n=800, D=10, L=3, seed=7)
    Yf = Y.astype(float)
    Yf[:40, 1] = np.nan  # unknown labels are left out of that label's fit
    W, b = pr.fit_logistic(X, Yf, None, np.array([0.05, 1.0, 10.0]), max_iter=2000, tol=1e-8)
    for j, C in enumerate((0.05, 1.0, 10.0)):
        keep = np.isfinite(Yf[:, j])
        ref = LogisticRegression(C=C, tol=1e-10, max_iter=5000).fit(X[keep], Y[keep, j])
        assert np.allclose(W[:, j], ref.coef_[0], atol=2e-3), j
        assert b[j] == pytest.approx(ref.intercept_[0], abs=2e-3)
    k = rng.integers(0, 3, 800)
    Wm, bm = pr.fit_logistic(X, k, None, 1.0, multiclass=True, n_classes=3, max_iter=2000, tol=1e-8)
    ref = LogisticRegression(C=1.0, tol=1e-10, max_iter=5000).fit(X, k)
    assert np.allclose(Wm - Wm.mean(axis=1, keepdims=True), ref.coef_.T - ref.coef_.T.mean(axis=1, keepdims=True),
                       atol=2e-3)


# --------------------------------------------------------------------------- splits and bad input


def test_grouped_cv_never_puts_a_patient_in_two_folds():
    rng = np.random.default_rng(8)
    patients = rng.integers(0, 150, 1000).astype(object)
    patients[:10] = None  # records without a patient id are their own groups
    splits = pr.group_cv_splits(patients, 5, seed=3)
    tests = [set(sp.test) for sp in splits]
    assert sorted(i for t in tests for i in t) == list(range(1000))  # every record tested exactly once
    for sp in splits:
        assert not set(sp.train) & set(sp.val) and not set(sp.train) & set(sp.test) and not set(sp.val) & set(sp.test)
        pt = {patients[i] for i in sp.train if patients[i] is not None}
        assert not pt & {patients[i] for i in sp.test if patients[i] is not None}
        assert not pt & {patients[i] for i in sp.val if patients[i] is not None}
    fold = pr.group_folds(patients, 5, seed=3)
    for p in set(patients[10:]):
        assert len(set(fold[patients == p])) == 1
    sizes = np.bincount(fold)
    assert sizes.max() - sizes.min() < 0.2 * sizes.mean()


def test_not_computable_metrics_are_null_with_reason():
    rng, X, Y = _synthetic(n=600, L=3, seed=9)
    folds = np.arange(600) % 10 + 1
    Y[folds == 10, 1] = 0  # no positive for label 1 in the test fold
    Y[folds == 9, 2] = 1  # no negative for label 2 in the validation fold
    emb = _emb_table(range(600), X, fold=pa.array(folds))
    lab = pa.table({"record_id": [str(i) for i in range(600)], **{f"y{j}": Y[:, j] for j in range(3)}})
    data = pr.load_probe_data(emb, lab, ["y0", "y1", "y2"])
    rep, _ = pr.run_probe(data, pr.fold_splits(data.meta["fold"], "10", "9"), pr.ProbeOptions(n_boot=50))
    per = rep["metrics"]["per_label"]
    assert per["y0"]["auroc"]["value"] is not None and per["y0"]["auroc"]["ci"]
    assert per["y1"]["auroc"]["value"] is None
    assert per["y1"]["auroc"]["reason"] == "no positive records in the test split"
    assert per["y2"]["auroc"]["value"] is not None  # ranking is fine on test
    assert per["y2"]["f1"]["value"] is None and "validation" in per["y2"]["f1"]["reason"]
    assert per["y2"]["calibration"]["after"] is None
    assert rep["metrics"]["macro"]["labels_computable"]["auroc"] == 2


def test_join_counts_nan_rows_and_no_join_error():
    from ecgtool.errors import InputError

    rng, X, Y = _synthetic(n=100, L=1, seed=10)
    X[[3, 7]] = np.nan
    emb = _emb_table([f"r{i}" for i in range(100)], X)
    lab = pa.table({"record_id": [f"r{i}" for i in range(50, 150)], "y": Y[:, 0]})
    data = pr.load_probe_data(emb, lab, ["y"])
    assert data.counts["rows_dropped_nonfinite"] == 2
    assert data.counts["joined"] == 50 and data.counts["embeddings_without_labels"] == 48
    assert len(data.record_ids) == 50
    other = pa.table({"record_id": [f"x{i}" for i in range(10)], "y": np.zeros(10, int)})
    with pytest.raises(InputError, match="share no record_id"):
        pr.load_probe_data(emb, other, ["y"])


def test_segments_are_averaged_per_record():
    X = np.array([[1, 2], [3, 4], [10, 10], [5, 6]], dtype=np.float32)
    emb = _emb_table(["a", "a", "b", "a"], X, segment=pa.array([0, 1, 0, 2]), y=pa.array([1, 1, 0, 1]))
    data = pr.load_probe_data(emb, None, ["y"])
    assert list(data.record_ids) == ["a", "b"]
    assert np.allclose(data.X, [[3, 4], [10, 10]])
    assert data.counts["segments_pooled"] == {"rows": 4, "records": 2, "max_per_record": 3}
    assert list(data.Y[:, 0]) == [1, 0]


def test_subgroup_bands():
    g = pr.subgroup_values(np.array([25, 40, 59.5, 60, 80, 300, None], dtype=object), [40, 60, 80])
    assert list(g) == ["<40", "40-60", "40-60", "60-80", ">=80", ">=80", "missing"]


# --------------------------------------------------------------------------- real data: PTB-XL features


def _ptbxl_features(data_dir):
    """Per-lead summary statistics of the 100 Hz PTB-XL records (a deterministic feature map)
    and superclass labels computed from ptbxl_database.csv + scp_statements.csv."""
    wfdb = pytest.importorskip("wfdb")
    root = data_dir / "ptbxl-500"
    sup = {}
    with open(root / "scp_statements.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get("diagnostic") in ("1", "1.0") and row.get("diagnostic_class"):
                sup[row[""]] = row["diagnostic_class"]
    ids, feats, labels, meta = [], [], [], {"patient_id": [], "age": [], "sex": [], "strat_fold": []}
    with open(root / "ptbxl_database.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            sig = wfdb.rdrecord(str(root / row["filename_lr"])).p_signal.T.astype(np.float64)  # (12, 1000)
            sig = np.nan_to_num(sig)
            d = np.diff(sig, axis=1)
            spec = np.abs(np.fft.rfft(sig - sig.mean(axis=1, keepdims=True), axis=1)) ** 2
            f = np.fft.rfftfreq(sig.shape[1], 1 / 100)
            bands = [spec[:, (f >= a) & (f < b)].sum(axis=1) for a, b in ((0.5, 5), (5, 15), (15, 40))]
            tot = sum(bands) + 1e-12
            q = np.percentile(sig, [1, 25, 50, 75, 99], axis=1)
            x = np.concatenate([sig.std(axis=1), q.ravel(), np.abs(d).mean(axis=1), d.std(axis=1),
                                *(b / tot for b in bands)])
            ids.append(row["ecg_id"])
            feats.append(x)
            classes = {sup[c] for c in ast.literal_eval(row["scp_codes"]) if c in sup}
            labels.append([(1 if c in classes else 0) if classes else None for c in SUPERCLASSES])
            meta["patient_id"].append(str(int(float(row["patient_id"]))))
            meta["age"].append(float(row["age"]) if row["age"] else None)
            meta["sex"].append("female" if row["sex"] == "1" else "male")
            meta["strat_fold"].append(int(row["strat_fold"]))
    return ids, np.array(feats, dtype=np.float32), labels, meta


@pytest.fixture(scope="module")
def ptbxl_tables(data_dir, tmp_path_factory):
    ids, X, labels, meta = _ptbxl_features(data_dir)
    out = tmp_path_factory.mktemp("probe")
    emb = _emb_table(ids, X, **{k: pa.array(v) for k, v in meta.items()})
    write_table(out / "emb.parquet", emb, TableMeta(kind="embeddings"))
    lab = pa.table({"record_id": pa.array(ids),
                    **{c: pa.array([r[j] for r in labels], type=pa.int8()) for j, c in enumerate(SUPERCLASSES)}})
    write_table(out / "labels.parquet", lab, TableMeta(kind="labels", info={"label_names": SUPERCLASSES}))
    return out


def test_probe_beats_chance_on_ptbxl_norm(ptbxl_tables):
    from ecgtool.io import read_table

    emb, _ = read_table(ptbxl_tables / "emb.parquet")
    lab, meta = read_table(ptbxl_tables / "labels.parquet")
    data = pr.load_probe_data(emb, lab, None, meta.info["label_names"])
    assert data.counts["joined"] == 500
    splits = pr.group_cv_splits(data.meta["patient_id"], 5, seed=0)
    rep, _ = pr.run_probe(data, splits, pr.ProbeOptions(n_boot=500))
    norm = rep["metrics"]["per_label"]["NORM"]
    assert norm["n_test"] > 400
    assert norm["auroc"]["ci"][0] > 0.5, norm["auroc"]
    assert norm["auroc"]["ci"][0] <= norm["auroc"]["value"] <= norm["auroc"]["ci"][1]
    assert 0.0 <= norm["f1"]["value"] <= 1.0


def test_cli_end_to_end_json_and_pngs(ptbxl_tables, cli, tmp_path):
    report = tmp_path / "report.json"
    figs = tmp_path / "figs"
    r = cli(["probe", ptbxl_tables / "emb.parquet", "--label-table", ptbxl_tables / "labels.parquet",
             "--fold-column", "strat_fold", "--test-folds", "10", "--val-folds", "9", "--n-boot", "200",
             "--subgroup", "sex", "--subgroup", "age:bands", "--scaling", "50,100,200",
             "--scaling-seeds", "2", "--report", report, "--figures", figs])
    assert r.exit_code == 0, r.output
    assert "macro" in r.stdout and "AUROC" in r.stdout
    rep = json.loads(report.read_text())
    assert rep["labels"] == SUPERCLASSES
    assert rep["protocol"]["splits"][0]["test"] == 49 or rep["protocol"]["splits"][0]["test"] > 30
    for name in SUPERCLASSES:
        e = rep["metrics"]["per_label"][name]
        for k in ("auroc", "auprc", "f1", "sensitivity", "specificity"):
            assert e[k]["value"] is None and e[k]["reason"] or (0 <= e[k]["value"] <= 1 and len(e[k]["ci"]) == 2)
        c = e["calibration"]
        assert "ece" in c["before"] and "brier" in c["before"]
    groups = rep["subgroups"]["age:bands"]["groups"]
    assert set(groups) <= {"<40", "40-60", "60-80", ">=80", "missing"}
    assert sum(g["n"] for g in groups.values()) == rep["protocol"]["splits"][0]["test"]
    assert set(rep["subgroups"]["sex"]["groups"]) == {"female", "male"}
    assert [p["n_train"] for p in rep["scaling"]["points"]] == [50, 100, 200]
    pngs = sorted(p.name for p in figs.glob("*.png"))
    assert "scaling.png" in pngs and "roc_all.png" in pngs
    assert {f"roc_pr_{c}.png" for c in SUPERCLASSES} <= set(pngs)
    assert {f"reliability_{c}.png" for c in SUPERCLASSES} <= set(pngs)
    for p in figs.glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the JSON is strict (no NaN)
    json.loads(report.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))


def test_cli_multiclass_and_errors(ptbxl_tables, cli, tmp_path):
    from ecgtool.io import read_table

    # A 3-class exclusive label built from the superclasses: NORM only / MI only / other.
    lab, _ = read_table(ptbxl_tables / "labels.parquet")
    d = {c: lab.column(c).to_pylist() for c in SUPERCLASSES}
    cls = []
    for i in range(lab.num_rows):
        if d["NORM"][i] is None:
            cls.append(None)
        elif d["NORM"][i] == 1 and sum(d[c][i] for c in SUPERCLASSES) == 1:
            cls.append("normal")
        elif d["MI"][i] == 1:
            cls.append("MI")
        else:
            cls.append("other")
    t = pa.table({"record_id": lab.column("record_id"), "group": pa.array(cls)})
    write_table(tmp_path / "cls.parquet", t, TableMeta(kind="labels"))
    rep_path = tmp_path / "mc.json"
    r = cli(["probe", ptbxl_tables / "emb.parquet", "-l", tmp_path / "cls.parquet", "--label-names", "group",
             "--multiclass", "--patient-column", "patient_id", "--cv", "4", "--n-boot", "100", "--report", rep_path])
    assert r.exit_code == 0, r.output
    rep = json.loads(rep_path.read_text())
    assert rep["task"] == "multiclass" and rep["labels"] == ["MI", "normal", "other"]
    assert 0 < rep["metrics"]["accuracy"] <= 1
    assert rep["calibration"]["after"]["nll"] is not None
    # no split given -> usage error; a label table that does not join -> error naming both
    r = cli(["probe", ptbxl_tables / "emb.parquet", "-l", ptbxl_tables / "labels.parquet"])
    assert r.exit_code == 2 and "--fold-column" in r.stderr
    bad = pa.table({"record_id": ["nope1", "nope2"], "NORM": [1, 0]})
    write_table(tmp_path / "bad.parquet", bad, TableMeta(kind="labels"))
    r = cli(["probe", ptbxl_tables / "emb.parquet", "-l", tmp_path / "bad.parquet", "--label-names", "NORM",
             "--fold-column", "strat_fold"])
    assert r.exit_code == 1 and "share no record_id" in r.stderr


def test_thresholded_metrics_need_only_their_own_class():
    from sklearn.metrics import f1_score

    y = np.array([1, 1, 1], dtype=bool)
    pred = np.array([1, 0, 0], dtype=bool)
    got = mt.confusion_weighted(y, pred, np.ones((1, 3)))
    assert got["f1"][0] == pytest.approx(f1_score(y, pred)) == pytest.approx(0.5)
    assert got["sensitivity"][0] == pytest.approx(1 / 3) and np.isnan(got["specificity"][0])
    assert mt.metric_reason("f1", 3, 0) is None
    assert mt.metric_reason("specificity", 3, 0) == "no negative records in the test split"
    assert mt.metric_reason("auroc", 3, 0) == "no negative records in the test split"
    # no positives but negatives, and no threshold chosen: specificity's reason is the threshold
    assert "no threshold" in mt.metric_reason("specificity", 0, 3, has_threshold=False)
    assert mt.metric_reason("sensitivity", 0, 3, has_threshold=False) == "no positive records in the test split"


def test_fold_splits_take_lists():
    from ecgtool.analysis.probe import fold_splits
    from ecgtool.errors import UsageError

    folds = np.array([1, 2, 3, 4, 5, 1.0, None, "3"], dtype=object)
    (sp,) = fold_splits(folds, "1,2", "3")
    assert sorted(sp.test) == [0, 1, 5] and sorted(sp.val) == [2, 7] and sorted(sp.train) == [3, 4]
    assert sp.name == "test folds 1,2"
    with pytest.raises(UsageError, match="fold 3 is in both"):
        fold_splits(folds, "3", "2,3")
