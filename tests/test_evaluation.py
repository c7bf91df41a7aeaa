"""The evaluation rules probe and finetune share: fold values, splits, label values, duplicates, temperature."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from ecgtool.analysis import probe as pr
from ecgtool.errors import InputError, UsageError
from ecgtool.evaluation import calibration as ecal
from ecgtool.evaluation import labels as el
from ecgtool.evaluation import splits as es
from ecgtool.evaluation.values import is_missing, value_text


@pytest.fixture
def warnings_of_ecgtool():
    """Warning messages logged to the 'ecgtool' logger during the test."""
    messages: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    logger = logging.getLogger("ecgtool")
    h = Keep(level=logging.WARNING)
    old = logger.level
    logger.addHandler(h)
    logger.setLevel(logging.INFO)
    yield messages
    logger.removeHandler(h)
    logger.setLevel(old)


# --------------------------------------------------------------------------- values and folds


def test_value_text_makes_whole_floats_integers_and_nulls_none():
    for v in (9, 9.0, np.int64(9), np.float32(9.0), "9", " 9.0 ", "9."):
        assert value_text(v) == "9", v
    assert value_text(9.5) == value_text("9.50") == "9.5"
    assert value_text("09") == "09" and value_text("fold_a") == "fold_a"
    for v in (None, float("nan"), np.nan, "", "  ", "NaN", "NA", "n/a", "null", "None"):
        assert value_text(v) is None and is_missing(v), v
    assert es.parse_folds("8, 9.0,8") == ["8", "9"] and es.parse_folds(["8,9", 10.0]) == ["8", "9", "10"]
    assert es.parse_folds(9.0) == ["9"] and es.parse_folds(None) == []


def _finetune_split(folds, val, test):
    from ecgtool.train.finetune import FinetuneConfig, split_rows

    cfg = FinetuneConfig(fold_column="strat_fold", val_folds=list(val), test_folds=list(test))
    cols = {"strat_fold": list(folds)}
    tr, va, te, _ = split_rows(cfg, cols.get, list(cols), np.array([f"r{i}" for i in range(len(folds))]))
    return tr, va, te


def test_fold_9_and_9_0_are_one_fold_in_probe_and_finetune():
    ints = np.arange(60) % 10 + 1
    floats = ints.astype(float).astype(object)
    floats[[3, 13]] = None                             # a joined fold column with nulls is float
    ints_obj = ints.astype(object)
    ints_obj[[3, 13]] = None
    text = np.array([None if v is None else str(v) for v in ints_obj], dtype=object)
    want_val = np.flatnonzero(ints == 9)
    want_test = np.flatnonzero(ints == 10)
    want_train = np.setdiff1d(np.flatnonzero(ints < 9), [3, 13])
    for col in (ints_obj, floats, text):
        for val, test in (("9", "10"), ("9.0", "10.0"), (9, 10), (9.0, 10.0)):
            (sp,) = pr.fold_splits(col, test, val, "strat_fold")
            assert np.array_equal(sp.val, want_val) and np.array_equal(sp.test, want_test)
            assert np.array_equal(sp.train, want_train)
            assert sp.name == "test fold 10"
            tr, va, te = _finetune_split(col, [str(val)], [str(test)])
            assert np.array_equal(va, want_val) and np.array_equal(te, want_test) and np.array_equal(tr, want_train)
    # one rule for the errors too
    with pytest.raises(UsageError, match="fold 9 is in both --test-folds and --val-folds"):
        _finetune_split(ints_obj, ["9.0"], ["9"])
    with pytest.raises(UsageError, match="fold 9 is in both --test-folds and --val-folds"):
        pr.fold_splits(floats, "9", "9.0")
    with pytest.raises(UsageError, match="no row is in validation fold 11"):
        _finetune_split(floats, ["11"], [])
    # finetune without test folds: everything else trains
    tr, va, te = _finetune_split(floats, ["9"], [])
    assert te.size == 0 and np.array_equal(va, want_val) and tr.size == 60 - 6 - 2


# --------------------------------------------------------------------------- grouped splits


def _patients(seed=0, n_patients=240, n_rows=1500):
    rng = np.random.default_rng(seed)
    sizes = rng.geometric(0.25, n_patients)               # most patients have few rows, some many
    p = np.repeat(np.arange(n_patients), sizes)[:n_rows]
    return rng.permutation(p).astype(object)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_grouped_split_keeps_patients_whole_and_sizes_near_the_fractions(seed):
    g = _patients(seed)
    n = len(g)
    tr, va, te = es.grouped_split(g, 0.15, 0.25, seed=seed)
    assert np.array_equal(np.sort(np.concatenate([tr, va, te])), np.arange(n))    # each row in exactly one split
    sides = [set(g[tr]), set(g[va]), set(g[te])]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    biggest = max(np.unique(g.astype(str), return_counts=True)[1])
    for idx, frac in ((tr, 0.6), (va, 0.15), (te, 0.25)):
        assert abs(len(idx) - frac * n) <= biggest, (len(idx), frac * n)
    # seeded: the same split again, another with another seed
    again = es.grouped_split(g, 0.15, 0.25, seed=seed)
    assert all(np.array_equal(a, b) for a, b in zip(again, (tr, va, te)))
    other = es.grouped_split(g, 0.15, 0.25, seed=seed + 100)
    assert not np.array_equal(other[1], va)


def test_one_group_function_for_probe_folds_and_finetune_splits():
    g = _patients(3)
    g[:7] = None                                          # no patient id: its own group
    fold = pr.group_folds(g, 5, seed=4)
    assert np.array_equal(fold, es.group_folds(g, 5, seed=4))
    for p in set(g[7:]):
        assert len(set(fold[g == p])) == 1
    sizes = np.bincount(fold)
    assert sizes.max() - sizes.min() <= max(np.unique(g[7:].astype(str), return_counts=True)[1])
    # finetune's random split goes through the same function, grouped by patient_id by default
    from ecgtool.train.finetune import FinetuneConfig, split_rows

    rid = np.array([f"rec{i // 2}" for i in range(len(g))])   # two segments per record
    pid = [None if v is None else f"p{v}" for v in g]
    pid[7] = None                                              # rows 6 and 7: one record, no patient id
    cols = {"patient_id": pid, "record_id": list(rid)}
    tr, va, te, desc = split_rows(FinetuneConfig(val_fraction=0.2, test_fraction=0.1), cols.get, list(cols), rid)
    assert desc == "grouped by patient_id: val 0.2, test 0.1"
    keys = es.group_keys(pid, fallback=rid)
    want = es.grouped_split(keys, 0.2, 0.1, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip((tr, va, te), want))
    side = np.empty(len(g), dtype=int)
    side[tr], side[va], side[te] = 0, 1, 2
    assert side[6] == side[7]                                  # a record without a patient id stays whole
    for p in set(v for v in pid if v is not None):
        assert len(set(side[[i for i, v in enumerate(pid) if v == p]])) == 1
    # no patient_id column: grouped by record
    cols = {"record_id": list(rid)}
    *_, desc = split_rows(FinetuneConfig(val_fraction=0.2), cols.get, list(cols), rid)
    assert desc.startswith("grouped by record_id")


def test_stratified_grouped_split_keeps_class_shares():
    rng = np.random.default_rng(5)
    g = np.arange(2000) // 2                                   # 1000 patients, 2 rows each
    cls = np.repeat(rng.random(1000) < 0.1, 2).astype(int)     # a rare class, constant within a patient
    tr, va, te = es.grouped_split(g, 0.2, 0.2, seed=0, strata=cls)
    for idx in (tr, va, te):
        assert abs(cls[idx].mean() - cls.mean()) < 0.01
    assert not set(g[tr]) & set(g[va]) and not set(g[va]) & set(g[te])


def test_grouped_split_refuses_too_few_groups_and_bad_fractions():
    with pytest.raises(InputError, match="2 group"):
        es.grouped_split(["a", "a", "b"], 0.3, 0.3)
    tr, va, te = es.grouped_split(["a", "b", "c"], 0.1, 0.1)      # every asked-for split gets a group
    assert len(tr) == len(va) == len(te) == 1
    with pytest.raises(UsageError, match="--val-fraction"):
        es.grouped_split(list("abcdef"), 1.5)
    with pytest.raises(UsageError, match="cannot make 5 folds"):
        es.group_folds(list("abcd"), 5)


# --------------------------------------------------------------------------- label values


def test_one_rule_for_label_values():
    vals = [1, 0, 1.0, 0.0, True, False, "1", "0", "1.0", "true", "No", "y", None, float("nan"), "", "NA", "null"]
    got = el.binary_values("x", vals)
    assert got[:12].tolist() == [1, 0, 1, 0, 1, 0, 1, 0, 1, 1, 0, 1] and np.isnan(got[12:]).all()
    with pytest.raises(InputError, match="label column 'x': value 'maybe' is not 1, 0 or null"):
        el.binary_values("x", [1, "maybe"], "lab.parquet")
    with pytest.raises(InputError, match="value 2 is not"):
        el.label_matrix({"x": [1, 2]}, ["x"])
    assert el.is_class_column(["N", "A", None]) and not el.is_class_column([1, 0, None, "true"])
    classes, cols = el.class_columns(["N", "A", None, " N", 1.0, 1])
    assert classes == ["1", "A", "N"] and cols["N"] == [1, 0, None, 1, 0, 0] and cols["1"][4:] == [1, 1]


def test_exclusive_classes_need_exactly_one_1(warnings_of_ecgtool):
    b = np.array([[1, 0, 0], [0, 1, np.nan], [1, 1, 0], [0, 0, 0], [np.nan] * 3], dtype=float)
    t, bad = el.class_targets(b, ["a", "b", "c"])
    assert t.tolist() == [0, 1, -1, -1, -1] and bad == 2
    assert any("not in exactly one of the classes" in m for m in warnings_of_ecgtool)


def _emb(ids):
    X = np.random.default_rng(0).normal(size=(len(ids), 4)).astype(np.float32)
    return pa.table({"record_id": ids, "embedding": pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), 4)})


def test_duplicate_record_ids_agreeing_rows_kept_once_conflicting_rows_refused(warnings_of_ecgtool):
    from ecgtool.train.data import join_labels

    agree = pa.table({"record_id": ["a", "b", "a", "c", "b"], "y": [1, 0, 1.0, 1, None], "z": [0, 1, 0, 1, 1]})
    # probe: one row of "a" is used, with a warning; "b" disagrees (0 vs null) only on a label not in use
    data = pr.load_probe_data(_emb(["a", "b", "c"]), agree.select(["record_id", "z"]), ["z"])
    assert data.Y[:, 0].tolist() == [0, 1, 1] and data.counts["label_rows"] == 5
    assert any("2 record_id(s) appear more than once with the same labels" in m for m in warnings_of_ecgtool)
    # finetune: the same rule
    y, joined = join_labels(np.array(["a", "a", "c", "x"]), agree, ["z"])
    assert joined == 3 and y[:, 0].tolist()[:3] == [0, 0, 1] and np.isnan(y[3, 0])
    # disagreeing rows: an error in both, naming the first such ids in table order
    for run in (lambda: pr.load_probe_data(_emb(["a", "b", "c"]), agree, ["y", "z"], labels_name="lab.parquet"),
                lambda: join_labels(np.array(["a", "b"]), agree, ["y", "z"], "lab.parquet")):
        with pytest.raises(InputError, match=r"lab.parquet: record_id 'b' appears more than once with different "
                                             r"labels \(e.g. 'b': 'y' is 0 in one row and null in another\)"):
            run()
    many = pa.table({"record_id": [f"r{i % 8}" for i in range(16)], "y": [i // 8 for i in range(16)]})
    with pytest.raises(InputError, match=r"'r0', 'r1', 'r2', 'r3', 'r4' and 3 more appear more than once"):
        el.unique_label_rows(many.column("record_id").to_pylist(), {"y": many.column("y").to_pylist()})


# --------------------------------------------------------------------------- temperature


def test_temperature_fit_recovers_a_known_temperature_sigmoid_and_softmax():
    rng = np.random.default_rng(11)
    # sigmoid, one label
    z = rng.normal(scale=2.0, size=20000)
    y = (rng.random(z.size) < 1 / (1 + np.exp(-z))).astype(float)
    assert ecal.fit_temperature(2.5 * z, y) == pytest.approx(2.5, rel=0.05)
    assert ecal.fit_temperature(0.4 * z, y.astype(bool)) == pytest.approx(0.4, rel=0.05)
    # sigmoid, several labels sharing one T, with unobserved (NaN) entries left out
    Z = rng.normal(scale=2.0, size=(8000, 3))
    Y = (rng.random(Z.shape) < 1 / (1 + np.exp(-Z))).astype(float)
    Yn = Y.copy()
    Yn[rng.random(Y.shape) < 0.3] = np.nan
    assert ecal.fit_temperature(3.0 * Z, Yn) == pytest.approx(3.0, rel=0.05)
    # unobserved entries really are left out: garbage under the mask changes nothing
    garbage = np.where(np.isnan(Yn), 1.0, Yn)
    assert ecal.fit_temperature(3.0 * Z, garbage, mask=~np.isnan(Yn)) == pytest.approx(
        ecal.fit_temperature(3.0 * Z, Yn), rel=1e-6)
    # softmax
    L = rng.normal(scale=1.5, size=(20000, 4))
    p = np.exp(L) / np.exp(L).sum(1, keepdims=True)
    k = (p.cumsum(1) < rng.random((len(L), 1))).sum(1)
    assert ecal.fit_temperature(2.0 * L, k, multiclass=True) == pytest.approx(2.0, rel=0.05)
    k_unknown = k.copy()
    k_unknown[:2000] = -1                                      # unknown classes are left out
    assert ecal.fit_temperature(0.5 * L, k_unknown, multiclass=True) == pytest.approx(0.5, rel=0.05)
    # scaling by the fitted T lowers the NLL
    T = ecal.fit_temperature(2.0 * L, k, multiclass=True)
    assert ecal.nll_multiclass(2.0 * L, k, T) < ecal.nll_multiclass(2.0 * L, k) - 0.05
    assert ecal.apply_temperature(2.0 * L, T, multiclass=True).sum(1) == pytest.approx(np.ones(len(L)))
    # a single observed class: no temperature
    assert ecal.fit_temperature(z, np.ones_like(z)) is None
    assert ecal.fit_temperature(L, np.zeros(len(L), dtype=int), multiclass=True) is None
    assert ecal.fit_temperature(z, np.full_like(z, np.nan)) is None


def test_temperature_at_the_edge_of_the_range_is_a_warning(warnings_of_ecgtool):
    lo, hi = ecal.T_RANGE
    z = np.array([-50.0, -40.0, 40.0, 50.0])                   # separable and wrong half the time: T runs up
    T = ecal.fit_temperature(z, np.array([0, 1, 0, 1]))
    assert T == pytest.approx(hi, rel=0.02)
    assert any(f"edge of its search range ({lo:g} .. {hi:g})" in m for m in warnings_of_ecgtool)
    warnings_of_ecgtool.clear()
    zk = np.array([[0.01, 0.0], [0.0, 0.01], [0.02, 0.0], [0.0, 0.02]])   # right but timid: T runs down
    assert ecal.fit_temperature(zk, np.array([0, 1, 0, 1]), multiclass=True) == pytest.approx(lo, rel=0.02)
    assert any("edge of its search range" in m for m in warnings_of_ecgtool)
    warnings_of_ecgtool.clear()
    rng = np.random.default_rng(2)
    zz = rng.normal(size=2000)
    ecal.fit_temperature(zz, (rng.random(2000) < 1 / (1 + np.exp(-zz))).astype(int))
    assert not any("edge" in m for m in warnings_of_ecgtool)


def test_evaluation_imports_neither_torch_nor_pyarrow():
    code = ("import sys, ecgtool.evaluation.labels, ecgtool.evaluation.splits, ecgtool.evaluation.calibration; "
            "print(sorted(m for m in ('torch', 'pyarrow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
