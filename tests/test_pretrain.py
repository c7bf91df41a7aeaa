"""Pretraining: objective math on tensors, then `ecgtool pretrain` on real PTB-XL segments
(resume bit for bit, NaN guard, disk full, different-model resume, 2-process DDP)."""

from __future__ import annotations

import errno
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ecgtool.train import objectives as O
from ecgtool.train.data import BatchPlan, cmsc_pairs, load_segments
from ecgtool.train.masking import compute_mask_indices, random_lead_mask

N_RECORDS = 8


def make_segments(data_dir: Path, dest: Path, n_records: int = N_RECORDS, nan_record: int | None = None) -> Path:
    """5 s, 500 Hz, 12-lead, per-lead z-scored segments of real PTB-XL records (2 per record)."""
    import pandas as pd
    import pyarrow as pa
    import wfdb

    from ecgtool.io import TableMeta, records_batch, write_table
    from ecgtool.signal.leads import normalize_leads

    root = data_dir / "ptbxl-500"
    db = pd.read_csv(root / "ptbxl_database.csv").head(n_records)
    rows = []
    for i, r in enumerate(db.itertuples()):
        rec = wfdb.rdrecord(str(root / r.filename_hr))
        sig = rec.p_signal.T.astype(np.float32)
        sig = (sig - sig.mean(1, keepdims=True)) / (sig.std(1, keepdims=True) + 1e-6)
        if nan_record is not None and i == nan_record:
            sig[:, :] = np.nan
        for s in range(2):
            rows.append({"record_id": str(r.ecg_id), "fs": 500.0, "leads": list(normalize_leads(rec.sig_name)),
                         "signal": sig[:, s * 2500:(s + 1) * 2500], "segment": s,
                         "patient_id": str(int(r.patient_id)), "strat_fold": int(r.strat_fold)})
    write_table(dest, pa.Table.from_batches([records_batch(rows, fixed=True)]), TableMeta(kind="segments"))
    return dest


@pytest.fixture(scope="module")
def seg(data_dir, tmp_path_factory) -> Path:
    return make_segments(data_dir, tmp_path_factory.mktemp("pt") / "seg.parquet")


def losses(run: Path) -> list[tuple[int, float]]:
    out = []
    for line in (run / "train_log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out.append((rec["step"], rec["loss"]))
    return out


TINY = ["-m", "ecgfm-tiny", "--batch-size", "2", "--device", "cpu", "--num-negatives", "20"]


# --------------------------------------------------------------------------- masking


def test_span_mask_counts_and_spans():
    rng = np.random.default_rng(1)
    m = compute_mask_indices((16, 156), 0.65, 10, rng, min_masks=2)
    counts = m.sum(1)
    assert (counts == counts[0]).all()           # same number of masked frames in every row
    assert 0.3 < m.mean() < 0.6                   # ~10-11 spans of 10 over 156 frames, overlapping
    # every masked run is at least one span long unless trimmed to equalise counts; most are >= 10
    runs = []
    for row in compute_mask_indices((16, 156), 0.65, 10, rng, same_count=False):
        edges = np.flatnonzero(np.diff(np.r_[0, row.astype(int), 0]))
        runs += list(edges[1::2] - edges[0::2])
    assert min(runs) >= 10
    # min_masks holds when mask_prob asks for none
    m0 = compute_mask_indices((4, 156), 0.0, 10, rng, min_masks=2, same_count=False)
    assert (m0.sum(1) >= 10).all() and (m0.sum(1) <= 20).all()
    # padding: no span in the padded tail
    pad = np.zeros((2, 156), dtype=bool)
    pad[:, 100:] = True
    mp = compute_mask_indices((2, 156), 0.65, 10, rng, padding_mask=pad)
    assert not mp[:, 100:].any()
    with pytest.raises(ValueError):
        compute_mask_indices((2, 156), 1.2, 10, rng)


def test_random_lead_mask_rate():
    keep = random_lead_mask(2000, 12, 0.5, np.random.default_rng(0))
    assert set(np.unique(keep)) == {0.0, 1.0}
    assert abs(keep.mean() - 0.5) < 0.02
    assert random_lead_mask(10, 12, 0.0, np.random.default_rng(0)).min() == 1.0


# --------------------------------------------------------------------------- objectives


def test_negatives_come_from_other_masked_frames_of_the_same_sample():
    counts = [5, 3, 7]
    # encode (sample, frame) in the target vectors
    y = torch.tensor([[s, f] for s, c in enumerate(counts) for f in range(c)], dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    neg = O.sample_negatives(y, counts, 50, generator=g)
    assert neg.shape == (50, 15, 2)
    assert torch.equal(neg[..., 0], y[None, :, 0].expand(50, -1))      # same sample
    assert not (neg[..., 1] == y[None, :, 1]).any()                     # never the frame itself
    frames = set(neg[:, 0, 1].tolist())
    assert frames == {1.0, 2.0, 3.0, 4.0}                               # all the others get drawn


def test_infonce_matches_the_formula():
    torch.manual_seed(0)
    x, y = torch.randn(6, 8), torch.randn(6, 8)
    neg = torch.randn(4, 6, 8)
    logits = O.infonce_logits(x, y, neg, logit_temp=0.1)
    cand = torch.cat([y[None], neg])
    manual = torch.stack([torch.stack([torch.dot(x[m], cand[k, m]) / (x[m].norm() * cand[k, m].norm()) / 0.1
                                       for k in range(5)]) for m in range(6)])
    assert torch.allclose(logits, manual, atol=1e-5)
    loss = O.infonce_loss(logits)
    assert math.isclose(float(loss), float((-torch.log_softmax(manual, 1)[:, 0]).mean()), rel_tol=1e-5)
    # a distractor equal to the positive is ignored
    neg2 = neg.clone()
    neg2[2] = y
    lg2 = O.infonce_logits(x, y, neg2)
    assert torch.isinf(lg2[:, 3]).all() and torch.isfinite(lg2[:, :3]).all()
    # perfect context -> loss near 0
    assert float(O.infonce_loss(O.infonce_logits(y, y, neg, 0.01))) < 1e-3


def test_cmsc_diversity_and_temperature():
    torch.manual_seed(0)
    z = torch.randn(5, 16)
    near, far = O.cmsc_loss(z, z + 0.01 * torch.randn(5, 16)), O.cmsc_loss(z, torch.randn(5, 16))
    assert float(near) < 0.05 < float(far)
    a, b = torch.randn(4, 16), torch.randn(4, 16)
    assert math.isclose(float(O.cmsc_loss(a, b)), float(O.cmsc_loss(b, a)), rel_tol=1e-6)  # symmetric
    za, zb = torch.nn.functional.normalize(a, dim=1), torch.nn.functional.normalize(b, dim=1)
    lg = za @ zb.t() / 0.1
    manual = 0.5 * torch.nn.functional.cross_entropy(lg, torch.arange(4)) + \
        0.5 * torch.nn.functional.cross_entropy(lg.t(), torch.arange(4))
    assert math.isclose(float(O.cmsc_loss(a, b)), float(manual), rel_tol=1e-5)
    # rows 0 and 1 from the same record: both are positives of each other
    g = torch.tensor([7, 7, 8, 9])
    assert float(O.cmsc_loss(a, b, groups=g)) != float(O.cmsc_loss(a, b))
    assert float(O.diversity_loss(torch.tensor(640.0), 640)) == 0.0
    assert math.isclose(float(O.diversity_loss(torch.tensor(160.0), 640)), 0.75)
    assert O.gumbel_temperature(0) == 2.0
    assert math.isclose(O.gumbel_temperature(1000), 2 * 0.999995 ** 1000)
    assert O.gumbel_temperature(10 ** 7) == 0.5


# --------------------------------------------------------------------------- data


def test_cmsc_pairs_and_batch_plan(seg):
    data = load_segments(str(seg))
    assert (data.n_leads, data.n_samples) == (12, 2500)
    pairs = cmsc_pairs(data.record_ids, data.segments)
    assert len(pairs) == N_RECORDS
    assert (data.record_ids[pairs[:, 0]] == data.record_ids[pairs[:, 1]]).all()
    assert (data.segments[pairs[:, 1]] == data.segments[pairs[:, 0]] + 1).all()
    # odd segment counts: (0,1),(2,3) and the last one left out
    p = cmsc_pairs(["a"] * 5 + ["b"], [4, 0, 3, 1, 2, 0])
    assert sorted(map(tuple, p.tolist())) == [(1, 3), (4, 2)]
    plan0 = BatchPlan(10, 2, seed=3, rank=0, world_size=2)
    plan1 = BatchPlan(10, 2, seed=3, rank=1, world_size=2)
    b0, b1 = list(plan0.epoch_batches(0)), list(plan1.epoch_batches(0))
    assert len(b0) == len(b1) == 2
    assert not set(np.concatenate(b0)) & set(np.concatenate(b1))      # ranks see disjoint items
    assert [list(b) for b in plan0.epoch_batches(0, start=1)] == [list(b0[1])]
    assert list(np.concatenate(b0)) != list(np.concatenate(list(plan0.epoch_batches(1))))


# --------------------------------------------------------------------------- the command


def test_pretrain_resume_is_bit_for_bit(cli, seg, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    r = cli(["pretrain", seg, "-o", full, *TINY, "--max-steps", "4", "--checkpoint-every", "2"])
    assert r.exit_code == 0, r.output
    assert (full / "model.safetensors").is_file()
    r = cli(["pretrain", seg, "-o", part, *TINY, "--max-steps", "2", "--checkpoint-every", "2"])
    assert r.exit_code == 0, r.output
    r = cli(["pretrain", seg, "-o", part, *TINY, "--max-steps", "4", "--checkpoint-every", "2"])
    assert r.exit_code == 2 and "holds checkpoints of an earlier run" in r.stderr  # no silent mixing of runs
    r = cli(["pretrain", seg, "-o", part, *TINY, "--max-steps", "4", "--checkpoint-every", "2", "--resume"])
    assert r.exit_code == 0, r.output
    a, b = losses(full), losses(part)
    assert [s for s, _ in a] == [1, 2, 3, 4]
    assert a == b                                    # identical floats, step for step
    assert len({v for _, v in a}) == 4               # the loss does move
    from safetensors.torch import load_file

    wa, wb = load_file(str(full / "model.safetensors")), load_file(str(part / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    rec = json.loads((full / "train_log.jsonl").read_text().splitlines()[0])
    for key in ("infonce", "diversity", "feature_penalty", "cmsc", "gumbel_temp", "lr"):
        assert key in rec
    assert rec["gumbel_temp"] == 2.0 and rec["lr"] == 5e-5
    from ecgtool.models.checkpoint import load_model

    m = load_model(full / "model.safetensors")
    assert m.family == "ecgfm" and m.quantizer is not None
    assert m.extra["training"]["step"] == 4


def test_pretrain_switches_and_bad_values(cli, seg, tmp_path):
    r = cli(["pretrain", seg, "-o", tmp_path / "a", *TINY, "--no-cmsc", "--no-rlm", "--max-steps", "1"])
    assert r.exit_code == 0, r.output
    rec = losses(tmp_path / "a")
    assert len(rec) == 1
    line = json.loads((tmp_path / "a" / "train_log.jsonl").read_text().splitlines()[0])
    assert "cmsc" not in line and "infonce" in line
    r = cli(["pretrain", seg, "-o", tmp_path / "b", *TINY, "--no-w2v", "--max-steps", "1"])
    assert r.exit_code == 0, r.output
    line = json.loads((tmp_path / "b" / "train_log.jsonl").read_text().splitlines()[0])
    assert "cmsc" in line and "infonce" not in line
    for bad, word in ((["--mask-prob", "1.5"], "--mask-prob"), (["--rlm-prob", "-0.1"], "--rlm-prob"),
                      (["--latent-temp", "0.5,2,0.9"], "--latent-temp"), (["--no-w2v", "--no-cmsc"], "nothing")):
        r = cli(["pretrain", seg, "-o", tmp_path / "c", *TINY, "--max-steps", "1", *bad])
        assert r.exit_code == 2 and word in r.output, r.output
    r = cli(["pretrain", seg, "-o", tmp_path / "d", "-m", "ecgfounder-tiny", "--max-steps", "1"])
    assert r.exit_code == 2 and "ECG-FM" in r.output


def test_nan_loss_stops_without_a_checkpoint(cli, data_dir, tmp_path):
    bad = make_segments(data_dir, tmp_path / "nan.parquet", n_records=4, nan_record=1)
    run = tmp_path / "run"
    r = cli(["pretrain", bad, "-o", run, *TINY, "--max-steps", "4", "--checkpoint-every", "1", "--no-rlm"])
    assert r.exit_code == 1
    assert "loss is nan at step" in r.output
    step = int(r.output.split("at step ")[1].split()[0])
    saved = sorted(p.name for p in (run / "checkpoints").glob("step-*")) if (run / "checkpoints").exists() else []
    assert saved == [f"step-{s:08d}" for s in range(1, step)][-2:]     # nothing at or after the bad step
    assert not (run / "model.safetensors").exists()


def test_disk_full_keeps_previous_checkpoint_and_other_model_refused(cli, seg, tmp_path, monkeypatch):
    import ecgtool.train.loop as L

    run = tmp_path / "run"
    real = L.write_state
    calls = {"n": 0}

    def flaky(obj, path):
        calls["n"] += 1
        if calls["n"] == 2:
            with open(path, "wb") as f:
                f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real(obj, path)

    monkeypatch.setattr(L, "write_state", flaky)
    r = cli(["pretrain", seg, "-o", run, *TINY, "--max-steps", "4", "--checkpoint-every", "1"])
    assert r.exit_code == 1
    assert "disk is full" in r.output and "step-00000001" in r.output and "intact" in r.output
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["step-00000001"]                                    # no temp dir, no half checkpoint
    state = torch.load(run / "checkpoints" / "step-00000001" / "state.pt", weights_only=True)
    assert state["loop"]["step"] == 1
    monkeypatch.setattr(L, "write_state", real)
    # resuming that run works; resuming it with another model is refused
    r = cli(["pretrain", seg, "-o", run, *TINY, "--max-steps", "2", "--checkpoint-every", "1", "--resume"])
    assert r.exit_code == 0, r.output
    assert [s for s, _ in losses(run)] == [1, 2]
    r = cli(["pretrain", seg, "-o", run, "-m", "ecgfm-small", "--batch-size", "2", "--device", "cpu",
             "--max-steps", "3", "--resume"])
    assert r.exit_code == 1 and "different model" in r.output


def test_ddp_two_processes_gloo(cli, seg, tmp_path):
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(29500 + os.getpid() % 1000), "-m", "ecgtool", "pretrain", str(seg), "-o", str(run), *TINY,
           "--max-steps", "2", "--checkpoint-every", "1", "--keep-checkpoints", "5"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "2 process(es)" in p.stderr
    recs = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2]                          # one writer: no duplicated lines
    assert all(r["items"] == 4 for r in recs)                            # 2 pairs x 2 processes per update
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000001", "step-00000002"]
    st = torch.load(run / "checkpoints" / "step-00000002" / "state.pt", weights_only=True)
    assert st["world_size"] == 2
    # resuming it in one process would change every rank's share of the data: refused
    r = cli(["pretrain", seg, "-o", run, *TINY, "--max-steps", "3", "--resume"])
    assert r.exit_code == 1 and "2 process(es)" in r.output


def test_pretrain_continues_from_imported_fairseq_checkpoint(cli, seg, reference_dir, tmp_path):
    """A fairseq-signals pretraining checkpoint (reduced fixture, real trainer output) trains on."""
    from ecgtool.models.checkpoint import load_model

    src = reference_dir / "fixtures" / "ecgfm" / "pretrained.pt"
    run = tmp_path / "cont"
    r = cli(["pretrain", seg, "-m", src, "-o", run, "--batch-size", "2", "--device", "cpu", "--max-steps", "1"])
    assert r.exit_code == 0, r.output
    before, after = load_model(src).state_dict(), load_model(run / "model.safetensors").state_dict()
    assert set(before) == set(after)                                      # heads kept
    diff = max(float((after[k] - before[k]).abs().max()) for k in before)
    assert 0 < diff < 1e-2                                                # one small AdamW step from there
