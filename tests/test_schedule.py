"""Learning-rate schedules (train/schedule.py) and finetune --schedule / --warmup-steps."""

from __future__ import annotations

import json
import math

import pytest

from ecgtool.errors import UsageError
from ecgtool.train.schedule import lr_multiplier


def test_cosine_with_warmup():
    f = lr_multiplier("cosine", warmup_steps=10, total_steps=110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5)
    assert f(110) == pytest.approx(0.0, abs=1e-12) and f(500) == pytest.approx(0.0, abs=1e-12)
    vals = [f(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))  # never rises after the warm-up
    g = lr_multiplier("constant", warmup_steps=4)
    assert [g(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_bad_schedules_are_usage_errors():
    with pytest.raises(UsageError, match="--schedule 'linear'"):
        lr_multiplier("linear")
    with pytest.raises(UsageError, match="needs the length"):
        lr_multiplier("cosine", total_steps=None)
    with pytest.raises(UsageError, match="--warmup-steps"):
        lr_multiplier("constant", warmup_steps=-1)


def test_finetune_follows_the_schedule(data_dir, tmp_path, cli):
    """finetune --schedule cosine --warmup-steps: the logged learning rate is --lr times the multiplier of each
    update, ending at 0 on the last of --max-steps."""
    heas = sorted((data_dir / "cinc2017").glob("A0000*.hea"))[:9]
    ref = tmp_path / "ref.csv"
    ref.write_text("record,label\n" + (data_dir / "cinc2017" / "REFERENCE.csv").read_text())
    rec, seg = tmp_path / "rec.parquet", tmp_path / "seg.parquet"
    assert cli(["convert", *heas, "--join", ref, "-o", rec]).exit_code == 0
    assert cli(["preprocess", "--preset", "ecgfounder", "--rename", "ECG=I", rec, "-o", seg]).exit_code == 0
    out = tmp_path / "ft.safetensors"
    r = cli(["finetune", seg, "-m", "ecgfounder-tiny", "--from-scratch", "--label-names", "label", "--task", "multiclass",
             "--val-fraction", "0.3", "--batch-size", "2", "--lr", "1e-3", "--lr-scales", "1,1",
             "--schedule", "cosine", "--warmup-steps", "2", "--max-steps", "6", "--eval-every", "3", "-o", out,
             "--report", tmp_path / "rep.json"])
    assert r.exit_code == 0, r.output
    log = [json.loads(line) for line in (tmp_path / "ft.run" / "train_log.jsonl").read_text().splitlines()]
    lrs = [e["lr"] for e in log if "lr" in e]
    f = lr_multiplier("cosine", 2, 6)
    assert lrs == pytest.approx([1e-3 * f(s) for s in range(len(lrs))])
    assert len(lrs) == 6 and math.isclose(lrs[-1], 1e-3 * f(5))
    rep = json.loads((tmp_path / "rep.json").read_text())
    assert rep["schedule"] == {"name": "cosine", "warmup_steps": 2, "total_steps": 6}
    r = cli(["finetune", seg, "-m", "ecgfounder-tiny", "--from-scratch", "--label-names", "label", "--task", "multiclass",
             "--schedule", "step", "--max-steps", "2", "-o", tmp_path / "x.safetensors"])
    assert r.exit_code == 2 and "--schedule 'step'" in r.output
