"""probe heads (attention, kNN), the random-encoder baseline (embed --random-init, probe --baseline), predict
--crops, leakage warnings and layer-wise learning rates."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from ecgtool.analysis import probe as pr
from ecgtool.io import TableMeta, read_table, write_table

SUPER = ["NORM", "MI", "STTC", "CD", "HYP"]


def _run(args):
    from typer.testing import CliRunner

    from ecgtool.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def _emb(ids, X, **cols) -> pa.Table:
    X = np.asarray(X, dtype=np.float32)
    return pa.table({"record_id": [str(i) for i in ids],
                     "embedding": pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), X.shape[1]), **cols})


# --------------------------------------------------------------------------- attention head


def test_attention_pooling_is_multihead_attention_with_one_query():
    import torch

    from ecgtool.analysis.attention_probe import _module

    torch.manual_seed(0)
    m = _module(32, 4, 3)
    x = torch.randn(5, 11, 32)
    pad = torch.zeros(5, 11, dtype=torch.bool)
    pad[1, 7:] = True
    mha = torch.nn.MultiheadAttention(32, 4, bias=False, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([m.q.weight, m.k.weight, m.v.weight]))
        mha.out_proj.weight.copy_(m.o.weight)
        ref, _ = mha(m.query.view(1, 1, 32).expand(5, 1, 32), x, x, key_padding_mask=pad)
        want = m.linear(ref[:, 0])
        got = m(x, pad)
        attn = m.attention(x, pad)
    assert torch.allclose(got, want, atol=1e-5)
    # padding tokens get no weight
    assert float(attn[1, 7:].abs().max()) == 0.0


def test_attention_probe_finds_the_one_informative_token():
    """The label is carried by one token at a random position among 40: mean pooling dilutes it, the learnt
    query finds it."""
    rng = np.random.default_rng(0)
    R, T, D = 900, 40, 16
    y = rng.random(R) < 0.4
    tokens = [rng.normal(size=(T, D)).astype(np.float32) for _ in range(R)]
    key = rng.normal(size=D)
    key /= np.linalg.norm(key)
    for i in range(R):
        t = int(rng.integers(T))
        tokens[i][t] += (4.0 * key).astype(np.float32)       # the marker token, in every record
        tokens[i][t, 0] += 3.0 if y[i] else -3.0              # carries the label
    X = np.stack([t.mean(axis=0) for t in tokens])
    folds = np.arange(R) % 10 + 1
    data = pr.ProbeData(record_ids=np.array([str(i) for i in range(R)], dtype=object), X=X,
                        Y=y[:, None].astype(float), label_names=["y"], meta={"fold": folds.astype(object)},
                        tokens=tokens)
    splits = pr.fold_splits(data.meta["fold"], "9,10", "8")
    lin, _ = pr.run_probe(data, splits, pr.ProbeOptions(n_boot=100))
    att, _ = pr.run_probe(data, splits, pr.ProbeOptions(n_boot=100, head="attention"))
    a_lin = lin["metrics"]["per_label"]["y"]["auroc"]["value"]
    a_att = att["metrics"]["per_label"]["y"]["auroc"]["value"]
    assert a_att > 0.95 and a_att > a_lin + 0.15, (a_lin, a_att)
    assert att["head"] == "attention" and att["protocol"]["head_fit"]["best_epoch"] >= 1
    assert "conformal" in att and att["conformal"]["test"]["per_label"]["y"]["computable"]


def test_tokens_of_segments_are_concatenated_per_record():
    local = pa.array([[[1.0, 2.0]], [[3.0, 4.0], [5.0, 6.0]], [[7.0, 8.0]]],
                     type=pa.list_(pa.list_(pa.float32(), 2)))
    t = _emb(["a", "a", "b"], [[0, 0], [1, 1], [2, 2]], local=local, y=pa.array([1, 1, 0]))
    data = pr.load_probe_data(t, None, ["y"], tokens=True)
    assert [x.tolist() for x in data.tokens] == [[[1, 2], [3, 4], [5, 6]], [[7, 8]]]
    from ecgtool.errors import UsageError

    with pytest.raises(UsageError, match="embed --local"):
        pr.load_probe_data(_emb(["a"], [[0, 0]], y=pa.array([1])), None, ["y"], tokens=True)


# --------------------------------------------------------------------------- real PTB-XL tables


@pytest.fixture(scope="module")
def ptbxl(data_dir, tmp_path_factory):
    """A feature map of ptbxl-500 as the embedding (as tests/test_probe.py), ids as 'ecgtool convert' gives them."""
    from test_probe import _ptbxl_features

    out = tmp_path_factory.mktemp("heads")
    ids, X, labels, meta = _ptbxl_features(data_dir)
    ids = [f"{int(i):05d}_lr" for i in ids]
    cols = {k: pa.array(v) for k, v in meta.items()}
    write_table(out / "emb.parquet", _emb(ids, X, **cols), TableMeta(kind="embeddings"))
    rng = np.random.default_rng(0)
    noisy = X + rng.normal(scale=3 * X.std(axis=0), size=X.shape).astype(np.float32)
    write_table(out / "noisy.parquet", _emb(ids, noisy, **cols), TableMeta(kind="embeddings", info={"model": "noisy"}))
    lab = pa.table({"record_id": ids, **{c: pa.array([r[j] for r in labels], type=pa.int8())
                                         for j, c in enumerate(SUPER)}})
    write_table(out / "labels.parquet", lab, TableMeta(kind="labels", info={"label_names": SUPER}))
    return out


def test_knn_head(ptbxl):
    rep = ptbxl / "knn.json"
    r = _run(["probe", ptbxl / "emb.parquet", "-l", ptbxl / "labels.parquet", "--patient-column", "patient_id", "--cv",
              "5", "--head", "knn", "--k", "15", "--n-boot", "200", "--report", rep])
    assert r.exit_code == 0, r.output
    out = json.loads(rep.read_text())
    assert out["head"] == "knn" and out["protocol"]["head_fit"][0] == {"k": 15, "metric": "cosine"}
    norm = out["metrics"]["per_label"]["NORM"]
    assert norm["n_test"] > 400 and norm["auroc"]["ci"][0] > 0.5
    assert "Knn probe" in r.stdout


def test_probe_baseline_table_gives_paired_differences(ptbxl):
    """--baseline FILE: both probes on the same splits and resamples; the main probe's CIs in the comparison are
    the probe's own; the differences are the differences of the points, with intervals that contain them."""
    rep = ptbxl / "base.json"
    r = _run(["probe", ptbxl / "emb.parquet", "-l", ptbxl / "labels.parquet", "--patient-column", "patient_id", "--cv",
              "5", "--n-boot", "300", "--baseline", ptbxl / "noisy.parquet", "--report", rep, "--figures",
              ptbxl / "figs"])
    assert r.exit_code == 0, r.output
    out = json.loads(rep.read_text())
    b = out["baseline"]
    ref, mod = b["models"]
    d = b["differences"][0]
    assert d["reference"] == "noisy linear probe"
    for name in SUPER:
        assert mod["per_label"][name]["auroc"] == {k: v for k, v in out["metrics"]["per_label"][name]["auroc"].items()
                                                   if k in mod["per_label"][name]["auroc"]}
        e = d["per_label"][name]["auroc"]
        assert e["value"] == pytest.approx(mod["per_label"][name]["auroc"]["value"]
                                           - ref["per_label"][name]["auroc"]["value"], abs=1e-12)
        assert e["ci"][0] <= e["value"] <= e["ci"][1] and 0 <= e["delong"]["p"] <= 1
    # noise in the baseline's embedding costs it AUROC; the paired interval says so
    assert d["macro"]["auroc"]["value"] > 0 and d["macro"]["auroc"]["ci"][0] > 0
    assert "Δ AUROC" in r.stdout and (ptbxl / "figs" / "baseline_forest.png").exists()
    # --baseline random without the records it needs
    r = _run(["probe", ptbxl / "emb.parquet", "-l", ptbxl / "labels.parquet", "--fold-column", "strat_fold",
              "--baseline", "random"])
    assert r.exit_code == 2 and "--records" in r.stderr


def test_every_probe_interval_contains_its_point(ptbxl):
    rep = ptbxl / "ci.json"
    r = _run(["probe", ptbxl / "emb.parquet", "-l", ptbxl / "labels.parquet", "--fold-column", "strat_fold",
              "--subgroup", "sex", "--report", rep])
    assert r.exit_code == 0, r.output
    out = json.loads(rep.read_text())
    n = 0

    def walk(x):
        nonlocal n
        if isinstance(x, dict):
            if x.get("value") is not None and isinstance(x.get("ci"), list):
                assert x["ci"][0] <= x["value"] <= x["ci"][1], x
                n += 1
            for v in x.values():
                walk(v)

    walk(out["metrics"])
    walk(out["subgroups"])
    walk(out["conformal"])
    assert n > 50
    counts = out["protocol"]["bootstrap"]["intervals"]
    assert counts["percentile"] + counts["bca"] + counts["normal"] > 20


# --------------------------------------------------------------------------- random init, crops, leakage


@pytest.fixture(scope="module")
def records(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("rec")
    heas = [data_dir / "ptbxl-500" / "records100" / "00000" / f"{i:05d}_lr.hea" for i in (1, 2, 3)]
    assert _run(["convert", *heas, "-o", out / "rec.parquet"]).exit_code == 0
    return out


def test_embed_random_init_is_seeded_and_named(records):
    rec = records / "rec.parquet"
    for name, extra in (("r0", ["--seed", "0"]), ("r0b", ["--seed", "0"]), ("r1", ["--seed", "1"]),
                        ("pre", None)):
        args = ["embed", rec, "-o", records / f"{name}.parquet"]
        args += ["-m", "ecgtool-default", "--random-init", *extra] if extra else []
        r = _run(args)
        assert r.exit_code == 0, r.output
    t = {n: read_table(records / f"{n}.parquet") for n in ("r0", "r0b", "r1", "pre")}
    e = {n: np.stack(v[0].column("embedding").to_numpy(zero_copy_only=False)) for n, v in t.items()}
    assert np.array_equal(e["r0"], e["r0b"]) and not np.allclose(e["r0"], e["r1"])
    assert not np.allclose(e["r0"], e["pre"])
    info = t["r0"][1].info
    assert info["model"] == "ecgtool-default (random init, seed 0)"
    assert info["embedding"]["random_init"] == {"architecture": "ecgtool-default", "seed": 0}
    assert info["architecture"] == "ecgtool-default" and info["pretraining_data"] == []
    pre = t["pre"][1].info
    assert pre["architecture"] == "ecgtool-default" and any(d.startswith("PTB-XL") for d in pre["pretraining_data"])
    assert "random_init" not in pre["embedding"]
    # a checkpoint is refused, naming its weightless architecture
    from ecgtool.models.default import default_model_path

    r = _run(["embed", rec, "-m", default_model_path(), "--random-init", "-o", records / "x.parquet"])
    assert r.exit_code == 2 and "is a checkpoint with trained weights" in r.stderr
    assert "-m ecgtool-default --random-init" in r.stderr
    assert not (records / "x.parquet").exists()


def test_predict_crops_average_evenly_spaced_windows(data_dir, tmp_path):
    """--crops 3 on 30 s CinC 2017 records and the default model's 10 s window: windows start at 0, 10 and
    20 s; the output is the mean of the three windows' probabilities."""
    import torch

    from ecgtool.io import batch_signal_array
    from ecgtool.models.checkpoint import load_model
    from ecgtool.models.inference import probabilities

    heas = [data_dir / "cinc2017" / f"A0000{i}.hea" for i in (1, 2, 4)]  # 9000 samples at 300 Hz each
    assert _run(["convert", *heas, "-o", tmp_path / "rec.parquet"]).exit_code == 0
    seg = tmp_path / "whole.parquet"
    r = _run(["preprocess", "--preset", "ecgtool-default", "--rename", "ECG=I", "--length", "30",
              tmp_path / "rec.parquet", "-o", seg])
    assert r.exit_code == 0, r.output
    r = _run(["predict", seg, "--crops", "3", "--precision", "fp32", "-o", tmp_path / "crops.parquet"])
    assert r.exit_code == 0, r.output
    assert "3 crop(s) of 2500 samples, evenly spaced (starts 0, 2500, 5000)" in r.stderr
    got, meta = read_table(tmp_path / "crops.parquet")
    assert meta.info["crops"] == 3
    m = load_model("ecgtool-default")
    tab, _ = read_table(seg)
    x = batch_signal_array(tab.to_batches()[0])
    assert x.shape[-1] == 7500
    names = meta.info["label_names"]
    with torch.no_grad():
        p = np.mean([probabilities(m.logits(torch.from_numpy(np.ascontiguousarray(x[:, :, a:a + 2500]))),
                                   m.extra["temperature"]).numpy() for a in (0, 2500, 5000)], axis=0)
    np.testing.assert_allclose(np.column_stack([got.column(n).to_numpy() for n in names]), p, atol=1e-5)
    # raw records: the preset's windows make way for the crops (CinC 2017's 'ECG' is taken as lead I)
    r = _run(["predict", tmp_path / "rec.parquet", "--crops", "3", "--precision", "fp32", "-o", tmp_path / "crops_raw.parquet"])
    assert r.exit_code == 0, r.output
    raw, _ = read_table(tmp_path / "crops_raw.parquet")
    np.testing.assert_allclose(raw.column("AF").to_numpy(), got.column("AF").to_numpy(), atol=1e-5)
    r = _run(["predict", seg, "--crops", "0", "-o", tmp_path / "bad.parquet"])
    assert r.exit_code == 2 and "--crops 0" in r.stderr


def test_leakage_sources_and_cards():
    from ecgtool.analysis.leakage import card_datasets, detect_sources, overlaps
    from ecgtool.models.card import card

    ecgfm = card("ecgfm-base").pretraining_data
    named = card_datasets(ecgfm)
    assert {"PTB-XL", "MIMIC-IV-ECG", "CinC 2021", "Georgia", "Ningbo", "CPSC 2018"} <= set(named)
    assert "CinC 2017" not in named
    default = card_datasets(card("ecgtool-default").pretraining_data)
    assert set(default) == {"PTB-XL", "CinC 2017"}
    assert detect_sources(record_ids=["00001_lr", "00002_lr"]) == ["PTB-XL"]
    assert detect_sources(record_ids=["A00001", "A00002"]) == ["CinC 2017"]
    assert detect_sources(record_ids=["A0001", "E00001", "JS00001", "HR00001"]) == \
        ["CPSC 2018", "Chapman-Shaoxing", "Georgia", "PTB-XL"]
    assert detect_sources(extra_strings=["ecgtool convert ../shared/data/ludb/data -o x"]) == ["LUDB"]
    assert detect_sources(record_ids=["1", "2"], columns=["strat_fold"]) == ["PTB-XL"]
    assert overlaps(ecgfm, ["LUDB"]) == [] and overlaps(ecgfm, ["PTB-XL"])[0]["dataset"] == "PTB-XL"
    # a random-init table has no pretraining to leak from
    from ecgtool.analysis.leakage import pretraining_of

    assert pretraining_of({"model": "x", "embedding": {"random_init": {"seed": 0}}})[1] == []
    assert pretraining_of({"model": "ecgfm-base"})[1] == list(ecgfm)


def test_finetune_leakage_warning_and_lr_scales(data_dir, tmp_path):
    """finetune from the default model on PTB-XL records warns (its card lists PTB-XL); --lr-scales 1,1 stays
    possible and gives one learning rate."""
    heas = [data_dir / "ptbxl-500" / "records100" / "00000" / f"{i:05d}_lr.hea" for i in range(1, 41)]
    db = data_dir / "ptbxl-500" / "ptbxl_database.csv"
    assert _run(["convert", *heas, "--join", db, "-o", tmp_path / "rec.parquet"]).exit_code == 0
    assert _run(["label", tmp_path / "rec.parquet", "-o", tmp_path / "lab.parquet"]).exit_code == 0
    assert _run(["preprocess", "--preset", "ecgtool-default", tmp_path / "rec.parquet", "-o",
                 tmp_path / "seg.parquet"]).exit_code == 0
    from ecgtool.models.default import default_model_path

    rep = tmp_path / "rep.json"
    r = _run(["finetune", tmp_path / "seg.parquet", "-m", default_model_path(), "-l", tmp_path / "lab.parquet",
              "--label-names", "NORM,STTC", "-o", tmp_path / "ft.safetensors", "--val-fraction", "0.4", "--device", "cpu",
              "--batch-size", "8",
              "--max-steps", "1", "--lr-scales", "1,1", "--lr", "1e-4", "--report", rep])
    assert r.exit_code == 0, r.output
    assert "possible leakage" in r.output and "PTB-XL (records500" in r.output
    out = json.loads(rep.read_text())
    assert {g["lr"] for g in out["lr_groups"].values()} == {1e-4}
    assert out["leakage"][0]["dataset"] == "PTB-XL"
