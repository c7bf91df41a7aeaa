"""Conformal prediction and abstention: the guarantee on synthetic data, bad input, probe on real CinC 2017
records (the shared splits), finetune storing the calibration and predict writing sets and decisions."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest

from ecgtool.analysis import conformal as cf
from ecgtool.errors import UsageError

SPLITS = "examples/default-model/splits.csv"


def _run(args):
    """The CLI in-process (for module-scoped fixtures, which cannot use the function-scoped ``cli``)."""
    from typer.testing import CliRunner

    from ecgtool.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


# --------------------------------------------------------------------------- the method


def test_conformal_quantile_is_the_finite_sample_rank():
    s = np.arange(1, 20, dtype=float)  # 19 scores: k = ceil(20 * 0.9) = 18
    assert cf.conformal_rank(19, 0.1) == 18
    assert cf.conformal_quantile(s, 0.1) == 18.0
    assert cf.conformal_quantile(s[:5], 0.1) == math.inf  # k = 6 > 5: no finite quantile
    assert cf.min_calibration(0.1) == 9 and cf.min_calibration(0.2) == 4
    for bad in (0, 1, -0.1, 1.5, float("nan")):
        with pytest.raises(UsageError, match="between 0 and 1"):
            cf.check_alpha(bad)


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_aps_covers_1_minus_alpha_on_exchangeable_data():
    """Over many calibration/test draws the mean coverage is within [1 - alpha, 1 - alpha + 1/(n+1)] (plus noise),
    every set holds the top class, and harder records get bigger sets."""
    rng = np.random.default_rng(0)
    K, n_cal, n_test, alpha = 4, 300, 2000, 0.1
    covs, sizes_easy, sizes_hard = [], [], []
    for trial in range(20):
        z = rng.normal(size=(n_cal + n_test, K)) * 1.5
        temp = np.where(rng.random(n_cal + n_test) < 0.5, 0.5, 3.0)  # sharp (easy) and flat (hard) records
        p = _softmax(z / temp[:, None])
        y = np.array([rng.choice(K, p=row) for row in p])
        cal = cf.calibrate_aps(p[:n_cal], y[:n_cal], alpha, list("abcd"))
        sets = cf.aps_sets(p[n_cal:], cal)
        assert sets[np.arange(n_test), p[n_cal:].argmax(axis=1)].all()  # never empty, top class always in
        covs.append(sets[np.arange(n_test), y[n_cal:]].mean())
        size = sets.sum(axis=1)
        sizes_easy.append(size[temp[n_cal:] == 0.5].mean())
        sizes_hard.append(size[temp[n_cal:] == 3.0].mean())
    assert 1 - alpha - 0.01 <= np.mean(covs) <= 1 - alpha + 1 / (n_cal + 1) + 0.01
    assert np.mean(sizes_hard) > np.mean(sizes_easy) + 0.5


def test_class_conditional_decisions_cover_each_class():
    """Positives are decided negative at most alpha of the time, negatives positive at most alpha, even at 5%
    prevalence; a label with no positive in the calibration split is not computable, with the reason."""
    rng = np.random.default_rng(1)
    alpha = 0.1
    miss_pos, miss_neg = [], []
    for trial in range(20):
        n = 4000
        y = rng.random((n, 2)) < np.array([0.05, 0.4])
        z = rng.normal(size=(n, 2)) + 2.0 * y
        p = 1 / (1 + np.exp(-z))
        cal = cf.calibrate_labels(p[:2000], y[:2000].astype(float), None, alpha, ["rare", "common"])
        d, ok = cf.label_decisions(p[2000:], cal, ["rare", "common"])
        assert ok.all()
        yt = y[2000:]
        miss_pos.append([(d[yt[:, j], j] == cf.NEGATIVE).mean() for j in range(2)])
        miss_neg.append([(d[~yt[:, j], j] == cf.POSITIVE).mean() for j in range(2)])
    assert (np.mean(miss_pos, axis=0) <= alpha + 0.02).all()
    assert (np.mean(miss_neg, axis=0) <= alpha + 0.02).all()
    # no positive in calibration
    Y = np.zeros((50, 1))
    cal = cf.calibrate_labels(np.full((50, 1), 0.2), Y, None, alpha, ["none"])
    assert cal["labels"]["none"]["reason"] == "not computable: no positive record in the calibration split"
    d, ok = cf.label_decisions(np.full((3, 1), 0.9), cal, ["none"])
    assert not ok[0] and cf.decision_names(d, ok) == [[None]] * 3
    # too few positives for alpha: never decided negative, and the report says why
    Y = np.r_[np.ones(5), np.zeros(45)][:, None]
    cal = cf.calibrate_labels(np.linspace(0, 1, 50)[:, None], Y, None, alpha, ["few"])
    assert cal["labels"]["few"]["t_pos"] is None and "never decided negative" in cal["labels"]["few"]["note"]


def test_risk_coverage_curve_and_area():
    conf = np.array([0.9, 0.8, 0.7, 0.6])
    ok = np.array([True, False, True, True])
    rc = cf.risk_coverage(conf, ok)
    # kept 1: 0/1, kept 2: 1/2, kept 3: 1/3, kept 4: 1/4
    assert rc["risk"] == pytest.approx([0, 0.5, 1 / 3, 0.25], abs=1e-6)
    assert rc["aurc"] == pytest.approx(np.mean([0, 0.5, 1 / 3, 0.25]))
    # ties are kept together: the curve has one point per distinct confidence
    rc = cf.risk_coverage(np.array([1.0, 1.0, 0.5]), np.array([True, False, True]))
    assert rc["coverage"] == pytest.approx([2 / 3, 1.0], abs=1e-6) and rc["aurc"] == pytest.approx((0.5 * 2 + 1 / 3) / 3)


# --------------------------------------------------------------------------- probe on real CinC 2017 records


def _features(sig: np.ndarray, fs: float) -> np.ndarray:
    """A deterministic feature map of a single-lead strip: amplitude, slope and spectral band statistics and the
    regularity of the rhythm (the autocorrelation peak between 0.3 and 2 s)."""
    x = np.nan_to_num(sig[0].astype(np.float64))
    x = x - x.mean()
    d = np.diff(x)
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(x.size, 1 / fs)
    bands = np.array([spec[(f >= a) & (f < b)].sum() for a, b in ((0.5, 5), (5, 15), (15, 40), (40, 150))])
    bands = bands / (bands.sum() + 1e-12)
    seg = x[: int(10 * fs)]
    ac = np.correlate(seg, seg, mode="full")[seg.size - 1:]
    ac = ac / (ac[0] + 1e-12)
    lo, hi = int(0.3 * fs), int(2.0 * fs)
    peak = ac[lo:hi].max() if hi < ac.size else 0.0
    q = np.percentile(x, [1, 5, 25, 50, 75, 95, 99])
    return np.concatenate([[x.std(), np.abs(d).mean(), d.std(), peak, np.argmax(ac[lo:hi]) / fs if hi < ac.size
                            else 0.0, x.size / fs], q / (x.std() + 1e-9), bands])


@pytest.fixture(scope="module")
def cinc_embeddings(data_dir, tmp_path_factory):
    """The CinC 2017 records of the shared splits (examples/default-model/splits.csv), converted by ecgtool with
    REFERENCE.csv and the split joined, and a feature map as the embedding."""
    from conftest import ROOT
    from ecgtool.io import TableMeta, batch_signals, open_table, write_table

    out = tmp_path_factory.mktemp("cinc")
    ref = out / "reference.csv"
    ref.write_text("record,label\n" + (data_dir / "cinc2017" / "REFERENCE.csv").read_text())
    split = {}
    for line in (ROOT / SPLITS).read_text().splitlines()[1:]:
        rec, s = line.split(",")
        if rec.startswith("A"):
            split[rec] = s
    files = [str(data_dir / "cinc2017" / f"{r}.hea") for r in sorted(split)]
    rec = out / "rec.parquet"
    r = _run(["convert", *files, "--join", ref, "--join", ROOT / SPLITS, "-o", rec])
    assert r.exit_code == 0, r.output
    ids, feats, labels, splits = [], [], [], []
    with open_table(rec, batch_size=256) as reader:
        for b in reader:
            d = b.to_pydict()
            for i, sig in enumerate(batch_signals(b)):
                ids.append(d["record_id"][i])
                feats.append(_features(sig, d["fs"][i]))
                labels.append(d["label"][i])
                splits.append(d["split"][i])
    X = np.array(feats, dtype=np.float32)
    emb = pa.table({"record_id": ids, "embedding": pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), X.shape[1]),
                    "label": labels, "split": splits})
    write_table(out / "emb.parquet", emb, TableMeta(kind="embeddings"))
    return out


def test_probe_conformal_sets_cover_90_percent_of_cinc2017_test_records(cinc_embeddings, cli):
    """Calibrated on the validation split (602 CinC 2017 records in splits.csv), the APS sets at alpha 0.1 hold the
    true class of 90% ± 3% of the 1201 test records, and the report gives that coverage with a CI."""
    import csv

    from conftest import ROOT

    with open(ROOT / SPLITS, newline="") as f:
        cinc = [r["split"] for r in csv.DictReader(f) if r["record"].startswith("A")]
    n_val, n_test = cinc.count("val"), cinc.count("test")
    assert (n_val, n_test) == (602, 1201)
    rep_path = cinc_embeddings / "rep.json"
    r = cli(["probe", cinc_embeddings / "emb.parquet", "--label-names", "label", "--multiclass", "--fold-column",
             "split", "--test-folds", "test", "--val-folds", "val", "--alpha", "0.1", "--report", rep_path,
             "--figures", cinc_embeddings / "figs"])
    assert r.exit_code == 0, r.output
    assert "Conformal prediction sets (APS, alpha=0.1" in r.stdout
    rep = json.loads(rep_path.read_text())
    assert rep["protocol"]["splits"][0]["val"] == n_val and rep["protocol"]["splits"][0]["test"] == n_test
    conf = rep["conformal"]
    assert conf["calibration"]["n_calibration"] == n_val and 0 < conf["calibration"]["qhat"] < 1
    cov = conf["test"]["coverage"]
    assert 0.87 <= cov["value"] <= 0.93, cov
    assert cov["ci"][0] <= cov["value"] <= cov["ci"][1] and cov["ci"][1] - cov["ci"][0] < 0.08
    assert conf["test"]["n_test"] == n_test
    assert 1.0 < conf["test"]["mean_set_size"] < 4.0
    assert sum(conf["test"]["set_size_counts"].values()) == n_test
    # selective prediction: the risk falls as the least confident records are set aside
    sel = rep["selective"]
    assert sel["risk"][0] < sel["risk_at_full_coverage"] and 0 < sel["aurc"] < sel["risk_at_full_coverage"]
    assert (cinc_embeddings / "figs" / "risk_coverage.png").read_bytes()[:4] == b"\x89PNG"


def test_probe_alpha_outside_0_1_is_a_usage_error(cinc_embeddings, cli):
    for bad in ("0", "1", "1.5"):
        r = cli(["probe", cinc_embeddings / "emb.parquet", "--label-names", "label", "--multiclass", "--fold-column",
                 "split", "--test-folds", "test", "--val-folds", "val", "--alpha", bad])
        assert r.exit_code == 2 and "between 0 and 1" in r.stderr, r.output


def test_probe_label_without_calibration_positives_is_not_computable(cinc_embeddings, cli, tmp_path):
    """A multi-label probe whose label has no positive in the validation split: its conformal decision is marked
    not computable with the reason; the other labels are calibrated."""
    from ecgtool.io import TableMeta, read_table, write_table

    t, _ = read_table(cinc_embeddings / "emb.parquet")
    lab = t.column("label").to_pylist()
    split = t.column("split").to_pylist()
    af = [1 if (v == "A" and s != "val") else 0 for v, s in zip(lab, split)]
    normal = [int(v == "N") for v in lab]
    t = t.append_column("AF", pa.array(af)).append_column("normal", pa.array(normal))
    write_table(tmp_path / "emb.parquet", t, TableMeta(kind="embeddings"))
    rep_path = tmp_path / "rep.json"
    r = cli(["probe", tmp_path / "emb.parquet", "--label-names", "AF,normal", "--fold-column", "split", "--test-folds",
             "test", "--val-folds", "val", "--n-boot", "100", "--report", rep_path])
    assert r.exit_code == 0, r.output
    rep = json.loads(rep_path.read_text())
    c = rep["conformal"]
    assert c["calibration"]["AF"]["reason"] == "not computable: no positive record in the calibration split"
    assert rep["conformal"]["test"]["per_label"]["AF"] == {
        "computable": False, "reason": "not computable: no positive record in the calibration split"}
    assert rep["conformal"]["test"]["per_label"]["normal"]["computable"]
    assert "not computable" in r.stdout


# --------------------------------------------------------------------------- finetune -> checkpoint -> predict


@pytest.fixture(scope="module")
def small_tables(data_dir, tmp_path_factory):
    """100 PTB-XL records (100 Hz, with ptbxl_database.csv joined), preprocessed for ecgfm-tiny's contract, and
    superclass labels."""
    import csv

    out = tmp_path_factory.mktemp("ft")
    db = data_dir / "ptbxl-500" / "ptbxl_database.csv"
    rows = list(csv.DictReader(open(db, newline="")))[:100]
    files = [str(data_dir / "ptbxl-500" / (r["filename_lr"] + ".hea")) for r in rows]
    rec = out / "rec.parquet"
    assert _run(["convert", *files, "--join", db, "-o", rec]).exit_code == 0
    assert _run(["label", rec, "-o", out / "labels.parquet"]).exit_code == 0
    r = _run(["preprocess", "--preset", "ecg-fm", rec, "-o", out / "seg.parquet"])
    assert r.exit_code == 0, r.output
    return out


def test_finetune_stores_conformal_and_predict_writes_decisions(small_tables, cli, tmp_path):
    from ecgtool.io import read_table
    from ecgtool.models.checkpoint import load_model

    out = tmp_path / "ft.safetensors"
    rep = tmp_path / "rep.json"
    r = cli(["finetune", small_tables / "seg.parquet", "-m", "ecgfm-tiny", "--from-scratch", "-l",
             small_tables / "labels.parquet", "--label-names", "NORM,MI,STTC,CD", "-o", out, "--val-fraction", "0.4",
             "--device", "cpu", "--batch-size", "16", "--max-steps", "3", "--alpha", "0.2", "--report", rep])
    assert r.exit_code == 0, r.output
    report = json.loads(rep.read_text())
    assert report["lr_groups"]["upper"]["lr"] == pytest.approx(5e-6) and report["lr_groups"]["lower"]["lr"] == \
        pytest.approx(5e-7) and report["lr_groups"]["head"]["lr"] == pytest.approx(5e-5)
    m = load_model(out)
    c = m.extra["conformal"]
    assert c["method"] == "class-conditional" and c["alpha"] == 0.2
    assert set(c["labels"]) == {"NORM", "MI", "STTC", "CD"}
    pred = tmp_path / "pred.parquet"
    r = cli(["predict", "-m", out, small_tables / "seg.parquet", "-o", pred])
    assert r.exit_code == 0, r.output
    t, meta = read_table(pred)
    assert meta.info["conformal"]["alpha"] == 0.2
    for name in ("NORM", "MI", "STTC", "CD"):
        col = t.column(f"{name}__decision").to_pylist()
        e = c["labels"][name]
        if "reason" in e:
            assert set(col) == {None}
            continue
        p = np.array(t.column(name).to_pylist())
        want = np.where((p >= (e["t_pos"] if e["t_pos"] is not None else -1)) & ~(p <= (e["t_neg"] if e["t_neg"]
                        is not None else 2)), "positive", np.where((p <= (e["t_neg"] if e["t_neg"] is not None else 2))
                        & ~(p >= (e["t_pos"] if e["t_pos"] is not None else -1)), "negative", "abstain"))
        assert col == want.tolist()
    unc = t.column("uncertain").to_pylist()
    for i, row in enumerate(unc):
        assert row == [n for n in ("NORM", "MI", "STTC", "CD") if t.column(f"{n}__decision")[i].as_py() == "abstain"]
    # --alpha outside (0, 1)
    r = cli(["finetune", small_tables / "seg.parquet", "-m", "ecgfm-tiny", "--from-scratch", "-l",
             small_tables / "labels.parquet", "-o", tmp_path / "x.safetensors", "--alpha", "1", "--max-steps", "1"])
    assert r.exit_code == 2 and "between 0 and 1" in r.output


def test_predict_summary_says_uncertain(small_tables, tmp_path):
    """The one-record terminal summary marks the labels the model abstains on."""
    import io
    from contextlib import redirect_stdout

    import torch

    from ecgtool.cli.modelrun import open_input
    from ecgtool.cli.predict import _print_summary
    from ecgtool.models.apply import predict_table
    from ecgtool.models.checkpoint import load_model
    from ecgtool.models.native import save_checkpoint
    from ecgtool.models.registry import create_model

    torch.manual_seed(0)
    m = create_model("ecgfm-tiny")
    m.reset_classifier(["NORM", "MI"])
    # NORM: both classes always in the set (abstain); MI: only 0 (negative)
    cal = {"method": "class-conditional", "alpha": 0.1,
           "labels": {"NORM": {"t_pos": 0.0, "t_neg": 1.0, "n_pos": 20, "n_neg": 20},
                      "MI": {"t_pos": 2.0, "t_neg": 1.0, "n_pos": 20, "n_neg": 20}}}
    ck = save_checkpoint(m, tmp_path / "m.safetensors", thresholds=[0.0, 0.0], conformal=cal)
    net = load_model(ck)
    assert net.extra["conformal"] == cal
    dest = tmp_path / "p.arrow"
    with open_input(str(small_tables / "seg.parquet"), 8) as reader:
        predict_table(reader, str(dest), net, device=torch.device("cpu"))
    buf = io.StringIO()
    with redirect_stdout(buf):
        _print_summary(str(dest), 2)
    lines = buf.getvalue().splitlines()
    assert any(ln.strip().startswith("NORM") and ln.rstrip().endswith("uncertain") for ln in lines)
    assert not any(ln.strip().startswith("MI ") and "uncertain" in ln for ln in lines)
    assert "  uncertain (90% conformal; the model abstains): NORM" in lines
    d, ok = cf.label_decisions(np.array([[0.5, 0.5]]), cal, ["NORM", "MI"])
    assert cf.decision_names(d, ok) == [["abstain", "negative"]]
