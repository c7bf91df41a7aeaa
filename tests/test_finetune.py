"""Finetuning on real data: PTB-XL superclasses (multi-label, folds, label table join), CinC 2017
rhythm (multi-class, from scratch, linear probing, zero-filled leads), losses, splits, bad input."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from ecgtool.evaluation.calibration import fit_temperature
from ecgtool.evaluation.splits import grouped_split
from ecgtool.train import objectives as O
from ecgtool.train.data import join_labels

N_PTBXL = 80
SUPER = ["NORM", "MI", "STTC", "CD", "HYP"]


def _write(dest: Path, rows: list[dict], kind: str = "segments", fixed: bool = True, **info) -> Path:
    import pyarrow as pa

    from ecgtool.io import TableMeta, records_batch, write_table

    batch = records_batch(rows, fixed=fixed) if "signal" in rows[0] else pa.RecordBatch.from_pylist(rows)
    write_table(dest, pa.Table.from_batches([batch]), TableMeta(kind=kind, info=info))
    return dest


def _z(sig: np.ndarray) -> np.ndarray:
    return ((sig - sig.mean(1, keepdims=True)) / (sig.std(1, keepdims=True) + 1e-6)).astype(np.float32)


@pytest.fixture(scope="module")
def ptbxl(data_dir, tmp_path_factory):
    """Two 5 s segments per record (500 Hz, 12 leads) and a superclass label table."""
    import pandas as pd
    import wfdb

    from ecgtool.signal.leads import normalize_leads

    out = tmp_path_factory.mktemp("ft")
    root = data_dir / "ptbxl-500"
    db = pd.read_csv(root / "ptbxl_database.csv").head(N_PTBXL)
    st = pd.read_csv(root / "scp_statements.csv", index_col=0)
    rows, labels = [], []
    for r in db.itertuples():
        rec = wfdb.rdrecord(str(root / r.filename_hr))
        sig = _z(rec.p_signal.T)
        for s in range(2):
            rows.append({"record_id": str(r.ecg_id), "fs": 500.0, "leads": list(normalize_leads(rec.sig_name)),
                         "signal": sig[:, s * 2500:(s + 1) * 2500], "segment": s,
                         "patient_id": str(int(r.patient_id)), "strat_fold": int(r.strat_fold)})
        codes = ast.literal_eval(r.scp_codes)
        classes = {st.loc[c, "diagnostic_class"] for c in codes if c in st.index and st.loc[c, "diagnostic"] == 1}
        labels.append({"record_id": str(r.ecg_id), **{n: int(n in classes) for n in SUPER}})
    seg = _write(out / "seg.parquet", rows)
    lab = _write(out / "labels.parquet", labels, kind="labels", label_names=SUPER)
    from ecgtool.models.native import save_checkpoint
    from ecgtool.models.registry import create_model

    torch.manual_seed(0)
    ckpt = save_checkpoint(create_model("ecgfm-tiny"), out / "pretrained.safetensors")
    return {"seg": seg, "labels": lab, "ckpt": ckpt, "dir": out, "table": labels}


FAST = ["--device", "cpu", "--batch-size", "8", "--eval-every", "2", "--max-steps", "4"]


def test_finetune_ptbxl_multilabel_folds(cli, ptbxl, tmp_path):
    out = tmp_path / "ft.safetensors"
    rep = tmp_path / "rep.json"
    r = cli(["finetune", ptbxl["seg"], "-m", ptbxl["ckpt"], "-l", ptbxl["labels"], "--label-names", "NORM,STTC,CD",
             "-o", out, "--fold-column", "strat_fold", "--val-folds", "8,9", "--test-folds", "10",
             "--report", rep, *FAST])
    assert r.exit_code == 0, r.output
    assert "160 of 160 rows (80 of 80 records) joined" in r.output
    report = json.loads(rep.read_text())
    assert report["fresh_tensors"] == 2                        # only proj.weight / proj.bias start fresh
    assert report["train_rows"] + report["val_rows"] + report["test_rows"] == 160
    assert len(report["evals"]) == 2 and report["best_step"] in (2, 4)
    assert 0.0 < report["val"]["macro_auprc"] <= 1.0 and "test" in report
    # pos_weight = (1 - p) / p on the training split's observed labels
    assert all(w > 0 for w in report["pos_weight"])
    from ecgtool.models.checkpoint import load_model

    m = load_model(out)
    assert m.label_names == ["NORM", "STTC", "CD"]
    assert len(m.extra["thresholds"]) == 3 and all(0 < t < 1 for t in m.extra["thresholds"])
    assert m.extra["temperature"] > 0 and m.extra["temperature"] != 1.0
    assert m.config["pretraining"] is False and m.quantizer is None
    # the run folder has the per-step log and its checkpoint
    log_lines = (tmp_path / "ft.run" / "train_log.jsonl").read_text().splitlines()
    assert sum("loss" in json.loads(x) for x in log_lines) == 4


def test_patient_grouped_split_never_leaks(ptbxl):
    from ecgtool.train.data import load_segments
    from ecgtool.train.finetune import FinetuneConfig, Finetuner
    from ecgtool.train.loop import LoopConfig

    data = load_segments(str(ptbxl["seg"]))
    ft = Finetuner(data, str(ptbxl["ckpt"]), ptbxl["dir"] / "x.safetensors", labels=str(ptbxl["labels"]),
                   cfg=FinetuneConfig(labels=["NORM", "CD"], val_fraction=0.3, test_fraction=0.2),
                   loop=LoopConfig(out_dir=ptbxl["dir"] / "x.run", max_steps=1), device="cpu")
    pid = np.asarray(data.column("patient_id"))
    sides = [set(pid[ft.train_idx]), set(pid[ft.val_idx]), set(pid[ft.test_idx])]
    assert all(sides)
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    # both segments of a record are always on the same side
    rid = data.record_ids
    assert not set(rid[ft.train_idx]) & set(rid[ft.val_idx])
    assert "grouped by patient_id" in ft.report["split"]
    # the same function on ids with repeats
    groups = ["a", "a", "b", "c", "c", "d", "e", "e", "f", "g"]
    tr, va, te = grouped_split(groups, 0.3, 0.2, seed=1)
    g = np.asarray(groups)
    assert not set(g[tr]) & set(g[va]) and not set(g[tr]) & set(g[te])
    assert len(tr) + len(va) + len(te) == len(groups)


def test_lead_augmentation_rotates_lead_I_towards_aVF(ptbxl, tmp_path):
    """A Lead-I model trained from 12-lead rows sees I cos t + aVF sin t."""
    from ecgtool.models.native import save_checkpoint
    from ecgtool.models.contract import InputContract
    from ecgtool.models.registry import create_model
    from ecgtool.train.finetune import FinetuneConfig, Finetuner
    from ecgtool.train.loop import LoopConfig, seed_step

    one = InputContract(fs=500.0, leads=("I",), n_samples=2500, normalisation="per-lead-zscore")
    ck = save_checkpoint(create_model("ecgfm-tiny", in_d=1, contract=one), tmp_path / "one.safetensors")
    ft = Finetuner(str(ptbxl["seg"]), str(ck), tmp_path / "o.safetensors", labels=str(ptbxl["labels"]),
                   cfg=FinetuneConfig(labels=["NORM", "CD"], lead_augment=True),
                   loop=LoopConfig(out_dir=tmp_path / "o.run", max_steps=1), device="cpu")
    idx = np.arange(8)
    batch = ft.make_batch(idx, seed_step(0, 0, 0))
    raw = ft.data.signals(ft.train_idx[idx])
    lead_i, lead_avf = raw[:, 0], raw[:, 5]
    x = batch["x"].numpy()[:, 0]
    angles = np.deg2rad([0, 15, -15, 30, -30, 45, -45])
    used = []
    for n in range(len(idx)):
        err = [np.abs(x[n] - (lead_i[n] * np.cos(a) + lead_avf[n] * np.sin(a))).max() for a in angles]
        assert min(err) < 1e-5
        used.append(int(np.argmin(err)))
    assert len(set(used)) > 1                                          # angles vary between rows
    # evaluation sees plain Lead I
    z = ft._inputs(ft.train_idx[idx], None)
    assert np.array_equal(z[:, 0], lead_i)


@pytest.fixture(scope="module")
def cinc(data_dir, tmp_path_factory):
    """CinC 2017 single-lead records at 500 Hz, first 5 s, with one-hot rhythm columns in the table."""
    import csv

    import wfdb
    from scipy.interpolate import interp1d

    root = data_dir / "cinc2017"
    refs = list(csv.reader(open(next(root.rglob("REFERENCE*.csv")))))
    names = {"N": "normal", "A": "af", "O": "other", "~": "noisy"}
    by_class: dict[str, list] = {}
    for rec, lab in refs:
        by_class.setdefault(lab, []).append(rec)
    chosen = [(r, lab) for lab in ("N", "A", "O") for r in by_class[lab][:14]]
    rows = []
    for rec, lab in chosen:
        path = next(root.rglob(f"{rec}.hea")).with_suffix("")
        sig = wfdb.rdrecord(str(path)).p_signal[:, 0]
        t = np.arange(len(sig)) / 300.0
        x = interp1d(t, sig)(np.arange(2500) / 500.0)[None]
        rows.append({"record_id": rec, "fs": 500.0, "leads": ["I"], "signal": _z(x), "patient_id": rec,
                     **{names[k]: int(k == lab) for k in ("N", "A", "O")}})
    return _write(tmp_path_factory.mktemp("cinc") / "cinc.parquet", rows, kind="records")


def test_multiclass_from_scratch_linear_probe_on_cinc2017(cli, cinc, tmp_path):
    out = tmp_path / "rhythm.safetensors"
    rep = tmp_path / "rep.json"
    r = cli(["finetune", cinc, "-m", "ecgfm-tiny", "--from-scratch", "--label-names", "normal,af,other",
             "--task", "multiclass", "--mode", "linear", "-o", out, "--val-fraction", "0.3", "--report", rep,
             "--device", "cpu", "--batch-size", "8", "--max-epochs", "2", "--lr", "1e-2",
             "--checkpoint-every", "1", "--keep-checkpoints", "100"])
    assert r.exit_code == 0, r.output
    assert "zero-filled" in r.output                                   # 1-lead table, 12-lead model
    report = json.loads(rep.read_text())
    assert report["from_scratch"] and report["val"]["n_labels_scored"] == 3
    from ecgtool.models.checkpoint import load_model

    m = load_model(out)
    assert m.label_names == ["normal", "af", "other"]
    assert m.extra["task"] == "multiclass"
    # linear probing: the backbone is the same after the first update and at the end; the head moved
    from safetensors.torch import load_file

    first = load_file(str(tmp_path / "rhythm.run" / "checkpoints" / "step-00000001" / "model.safetensors"))
    sd = m.state_dict()
    for k in ("feature_extractor.conv_layers.0.0.weight", "encoder.layers.1.fc2.weight", "layer_norm.weight"):
        assert torch.equal(sd[k], first[k])
    assert not torch.equal(sd["proj.weight"], first["proj.weight"])
    # without --from-scratch a registry name is refused
    r = cli(["finetune", cinc, "-m", "ecgfm-tiny", "--label-names", "normal,af", "-o", tmp_path / "x.safetensors",
             "--device", "cpu", "--max-steps", "1"])
    assert r.exit_code == 1 and "--from-scratch" in r.output and "registry" in r.output


def test_losses():
    z = torch.tensor([[2.0, -1.0], [0.5, 0.3], [-1.0, 1.5]])
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    m = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    pw = torch.tensor([2.0, 0.5])
    per = torch.nn.functional.binary_cross_entropy_with_logits(z, y, pos_weight=pw, reduction="none")
    assert math.isclose(float(O.bce_loss(z, y, m, pw)), float((per * m).sum() / 5), rel_tol=1e-6)
    # a null label contributes no gradient
    zz = z.clone().requires_grad_(True)
    O.bce_loss(zz, y, m, pw).backward()
    assert zz.grad[1, 1] == 0 and zz.grad[0, 1] != 0
    # nnPU against its formula, label 0: P = rows 0, 2; U = all rows; prior 0.5
    prior = torch.tensor([0.5, 0.4])
    sp = torch.nn.functional.softplus
    zp, zu = z[[0, 2], 0], z[:, 0]
    rp = 0.5 * sp(-zp).mean()
    rn = sp(zu).mean() - 0.5 * sp(zp).mean()
    want0 = rp + torch.clamp(rn, min=0)
    zp1, zu1 = z[[1], 1][:0], z[[0, 2], 1]                        # label 1: row 1 is null, no positive left
    want1 = sp(zu1).mean()
    got = O.nnpu_loss(z, y, prior, m)
    assert math.isclose(float(got), float((want0 + want1) / 2), rel_tol=1e-5)
    assert float(O.nnpu_loss(z, y, prior, m)) != float(O.bce_loss(z, y, m))
    # multiclass: -1 rows are ignored
    t = torch.tensor([0, -1, 1])
    assert math.isclose(float(O.multiclass_loss(z, t)),
                        float(torch.nn.functional.cross_entropy(z[[0, 2]], t[[0, 2]])), rel_tol=1e-6)
    # temperature: logits made too sharp by 3x come back near T = 3
    torch.manual_seed(0)
    logit = torch.randn(4000, 1) * 2
    lab = (torch.rand(4000, 1) < torch.sigmoid(logit)).float()
    assert abs(fit_temperature((logit * 3).numpy(), lab.numpy()) - 3.0) < 0.4
    assert O.pos_weight_from_counts(torch.tensor([1.0, 5.0]), torch.tensor([4.0, 10.0])).tolist() == [3.0, 1.0]


def test_label_masks_and_bad_labels(cli, ptbxl, tmp_path):
    import pyarrow as pa

    rows = ptbxl["table"]
    # two "sources": the second half never annotates MI (null), the first half never CD
    mixed = []
    for i, r in enumerate(rows):
        r = dict(r)
        if i % 2:
            r["MI"] = None
        else:
            r["CD"] = None
        mixed.append(r)
    lab = _write(tmp_path / "mixed.parquet", mixed, kind="labels", label_names=SUPER)
    y, joined = join_labels(np.array([r["record_id"] for r in rows] + ["nope"]), pa.table(
        {k: [r[k] for r in mixed] for k in mixed[0]}), ["MI", "CD"])
    assert joined == len(rows) and np.isnan(y[-1]).all()
    assert np.isnan(y[1::2][:len(rows) // 2, 0]).all() and np.isnan(y[0::2][:len(rows) // 2, 1]).all()
    out = tmp_path / "m.safetensors"
    r = cli(["finetune", ptbxl["seg"], "-m", ptbxl["ckpt"], "-l", lab, "--label-names", "NORM,CD", "-o", out,
             "--device", "cpu", "--batch-size", "8", "--max-steps", "2", "--eval-every", "2"])
    assert r.exit_code == 0, r.output
    # single-class column
    one = _write(tmp_path / "one.parquet", [{"record_id": r["record_id"], "NORM": r["NORM"], "SR": 1}
                                            for r in rows], kind="labels", label_names=["NORM", "SR"])
    r = cli(["finetune", ptbxl["seg"], "-m", ptbxl["ckpt"], "-l", one, "-o", tmp_path / "h.safetensors",
             "--device", "cpu", "--max-steps", "1"])
    assert r.exit_code == 1 and "'SR' has a single class" in r.output, r.output
    # a label table that joins nothing
    other = _write(tmp_path / "other.parquet", [{"record_id": f"x{i}", "NORM": 1} for i in range(5)],
                   kind="labels", label_names=["NORM"])
    r = cli(["finetune", ptbxl["seg"], "-m", ptbxl["ckpt"], "-l", other, "-o", tmp_path / "j.safetensors",
             "--device", "cpu", "--max-steps", "1"])
    assert r.exit_code == 1 and "0 of 80 records" in r.output, r.output
    # empty column and out-of-range options
    empty = _write(tmp_path / "empty.parquet", [{"record_id": r["record_id"], "NORM": r["NORM"], "E": None}
                                                for r in rows], kind="labels", label_names=["NORM", "E"])
    r = cli(["finetune", ptbxl["seg"], "-m", ptbxl["ckpt"], "-l", empty, "-o", tmp_path / "e.safetensors",
             "--device", "cpu", "--max-steps", "1"])
    assert r.exit_code == 1 and "'E' is empty" in r.output, r.output
    for bad, word in ((["--task", "regression"], "--task"), (["--lr", "0"], "--lr"),
                      (["--val-fraction", "1.5"], "--val-fraction"), (["--mode", "half"], "--mode")):
        r = cli(["finetune", ptbxl["seg"], "-m", ptbxl["ckpt"], "-l", ptbxl["labels"], "--label-names", "NORM",
                 "-o", tmp_path / "b.safetensors", "--device", "cpu", "--max-steps", "1", *bad])
        assert r.exit_code == 2 and word in r.output, r.output


def test_net1d_frozen_features_from_native_checkpoint(cli, ptbxl, tmp_path):
    """The ECGFounder family finetunes too: new dense head, stem and first stage frozen."""
    from safetensors.torch import load_file

    from ecgtool.models.checkpoint import load_model

    from ecgtool.models.native import save_checkpoint
    from ecgtool.models.contract import InputContract
    from ecgtool.models.registry import create_model
    from ecgtool.signal.leads import STANDARD_12

    five = InputContract(fs=500.0, leads=STANDARD_12, n_samples=2500, normalisation="per-lead-zscore")
    torch.manual_seed(0)
    base = create_model("ecgfounder-tiny", n_classes=3, contract=five)
    ck = save_checkpoint(base, tmp_path / "net1d.safetensors")
    out = tmp_path / "n.safetensors"
    r = cli(["finetune", ptbxl["seg"], "-m", ck, "-l", ptbxl["labels"], "--label-names", "NORM,CD", "-o", out,
             "--mode", "frozen-features", "--task", "pu", "--device", "cpu", "--batch-size", "8",
             "--max-steps", "3", "--eval-every", "3", "--lr", "1e-3"])
    assert r.exit_code == 0, r.output
    m = load_model(out)
    assert m.family == "net1d" and m.label_names == ["NORM", "CD"] and m.dense.out_features == 2
    before, after = load_file(str(ck)), m.state_dict()
    assert torch.equal(after["first_conv.conv.weight"], before["first_conv.conv.weight"])
    moved = [k for k in after if k.startswith("stage_list.3.") and not torch.equal(after[k], before[k])]
    assert moved                                                        # later stages train


def test_finetune_from_imported_fairseq_checkpoint(cli, ptbxl, reference_dir, tmp_path):
    """fairseq-signals pretraining checkpoint (reduced fixture) -> classifier; conv extractor frozen."""
    from ecgtool.models.checkpoint import load_model

    src = reference_dir / "fixtures" / "ecgfm" / "pretrained.pt"
    out = tmp_path / "fs.safetensors"
    rep = tmp_path / "rep.json"
    r = cli(["finetune", ptbxl["seg"], "-m", src, "-l", ptbxl["labels"], "--label-names", "NORM,CD", "-o", out,
             "--mode", "frozen-features", "--device", "cpu", "--batch-size", "8", "--max-steps", "2",
             "--eval-every", "2", "--lr", "1e-3", "--report", rep])
    assert r.exit_code == 0, r.output
    assert json.loads(rep.read_text())["fresh_tensors"] == 2
    base, m = load_model(src).state_dict(), load_model(out).state_dict()
    conv = [k for k in base if k.startswith("feature_extractor.")]
    assert conv and all(torch.equal(m[k], base[k]) for k in conv)           # frozen, as ECG-FM finetuning
    assert not torch.equal(m["encoder.layers.0.fc1.weight"], base["encoder.layers.0.fc1.weight"])
    assert "mask_emb" not in m and "quantizer.vars" not in m               # pretraining heads dropped


def test_finetune_resume_matches_uninterrupted(cli, ptbxl, tmp_path):
    """Stop after 2 updates, resume to 4: same losses, evaluations, best model and thresholds."""
    common = ["finetune", ptbxl["seg"], "-m", ptbxl["ckpt"], "-l", ptbxl["labels"], "--label-names", "NORM,CD",
              "--device", "cpu", "--batch-size", "8", "--eval-every", "2", "--checkpoint-every", "2",
              "--val-fraction", "0.2"]
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert cli([*common, "-o", a, "--max-steps", "4"]).exit_code == 0
    assert cli([*common, "-o", b, "--max-steps", "2"]).exit_code == 0
    r = cli([*common, "-o", b, "--max-steps", "4", "--resume"])
    assert r.exit_code == 0, r.output

    def lines(p):
        return [json.loads(x) for x in (p.with_name(p.stem + ".run") / "train_log.jsonl").read_text().splitlines()]

    la, lb = lines(a), lines(b)
    strip = [{k: v for k, v in x.items() if k not in ("data_s", "step_s", "time_s")} for x in la]
    assert strip == [{k: v for k, v in x.items() if k not in ("data_s", "step_s", "time_s")} for x in lb]
    assert sum("eval" in x for x in la) == 2
    from ecgtool.models.checkpoint import load_model

    ma, mb = load_model(a), load_model(b)
    assert ma.extra["thresholds"] == mb.extra["thresholds"] and ma.extra["temperature"] == mb.extra["temperature"]
    sa, sb = ma.state_dict(), mb.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_drop_leads_keeps_a_signal_and_only_real_leads():
    from ecgtool.train.finetune import drop_leads

    rng = np.random.default_rng(0)
    x = np.ones((400, 12, 5), dtype=np.float32)
    x[:100, 1:] = 0.0  # single-lead rows (zero-filled): only lead 0 carries a signal
    out = drop_leads(x.copy(), 0.5, 0.3, rng)
    kept = np.abs(out).sum(-1) > 0
    assert kept.any(1).all()  # never an all-zero sample
    assert not kept[:100, 1:].any() and kept[:100, 0].all()
    frac_single = (kept[100:].sum(1) == 1).mean()
    assert 0.2 < frac_single < 0.45  # ~0.3 from single_lead_prob (+ rare 1-lead masks)
    assert 0.35 < kept[100:].mean() < 0.6
    np.testing.assert_array_equal(drop_leads(x.copy(), 0.0, 0.0, rng), x)


def test_multiclass_from_a_column_of_class_names(cli, cinc, tmp_path):
    """--task multiclass with one label column of class names (as CinC 2017's REFERENCE.csv) gives one class each."""
    t = pq.read_table(cinc)
    cls = ["N" if n else "A" if a else "O" for n, a in zip(t.column("normal").to_pylist(), t.column("af").to_pylist())]
    lab = tmp_path / "rhythm.parquet"
    pq.write_table(pa.table({"record_id": t.column("record_id"), "label": pa.array(cls)}), lab)
    out = tmp_path / "m.safetensors"
    r = cli(["finetune", cinc, "-m", "ecgfm-tiny", "--from-scratch", "-l", lab, "--label-names", "label",
             "--task", "multiclass", "--mode", "linear", "-o", out, "--val-fraction", "0.3",
             "--device", "cpu", "--batch-size", "8", "--max-steps", "2"])
    assert r.exit_code == 0, r.output
    assert "holds 3 classes: A, N, O" in r.output
    from ecgtool.models.checkpoint import load_model

    assert load_model(out).label_names == ["A", "N", "O"]
