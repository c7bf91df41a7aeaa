"""Every model family through the commands: convert | preprocess --preset <family> | embed, predict,
finetune (two updates, layer-wise learning rates) and saliency, on a few real PTB-XL records.

The tiny variant of each family stands in for its released weights (same code path, random weights).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet  # noqa: F401
import pytest
import torch

from ecgtool.models import list_models
from ecgtool.models.base import ATTENTION
from ecgtool.models.registry import create_model, model_card

TINY = [n for n in list_models() if model_card(n).tiny]
RECORDS = [1, 2, 3, 4, 5, 6, 7, 8]


def _ecgtool(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "ecgtool", *map(str, args)], input=stdin, capture_output=True)


@pytest.fixture(scope="module")
def raw(data_dir, tmp_path_factory):
    """Eight PTB-XL records (500 Hz, 10 s) as converted, and a binary label table for them."""
    from ecgtool.io import TableMeta, write_table

    out = tmp_path_factory.mktemp("families")
    heas = [data_dir / "ptbxl-500" / "records500" / "00000" / f"{i:05d}_hr.hea" for i in RECORDS]
    r = _ecgtool("-q", "convert", *heas, "-o", out / "rec.parquet")
    assert r.returncode == 0, r.stderr.decode()
    ids = pa.parquet.read_table(out / "rec.parquet").column("record_id").to_pylist()
    labels = pa.table({"record_id": ids, "y": [k % 2 for k in range(len(ids))]})
    write_table(out / "labels.parquet", labels, TableMeta(kind="labels", info={"label_names": ["y"]}))
    return out


@pytest.mark.parametrize("name", TINY)
def test_family_through_the_commands(name, raw, tmp_path):
    from ecgtool.models.native import save_checkpoint

    card = model_card(name)
    c = card.contract
    torch.manual_seed(0)
    model = create_model(name)
    if model.get_classifier() is None and model.head_name is not None:
        model.reset_classifier(["AF", "NORM"])
    ckpt = save_checkpoint(model, tmp_path / "m.safetensors")
    # convert | preprocess --preset | embed, as a pipe
    pre = _ecgtool("-q", "preprocess", "--preset", c.preset, "--leads", ",".join(c.leads), raw / "rec.parquet",
                   "-o", "-")
    assert pre.returncode == 0, pre.stderr.decode()
    emb = _ecgtool("-q", "embed", "-m", ckpt, "-", "-o", tmp_path / "emb.parquet", "--device", "cpu",
                   stdin=pre.stdout)
    assert emb.returncode == 0, emb.stderr.decode()
    t = pa.parquet.read_table(tmp_path / "emb.parquet")
    assert t.num_rows == len(RECORDS)
    e = np.asarray(t.column("embedding").to_pylist(), dtype=np.float32)
    assert e.shape == (len(RECORDS), model.embed_dim) and np.isfinite(e).all()
    seg = tmp_path / "seg.parquet"
    assert _ecgtool("-q", "preprocess", "--preset", c.preset, "--leads", ",".join(c.leads), raw / "rec.parquet",
                    "-o", seg).returncode == 0
    # --local and --layer through the interface
    r = _ecgtool("-q", "embed", "-m", ckpt, seg, "--local", "--layer", "0", "-o", tmp_path / "loc.parquet")
    assert r.returncode == 0, r.stderr.decode()
    # predict (the model has a head now)
    r = _ecgtool("-q", "predict", "-m", ckpt, seg, "-o", tmp_path / "pred.parquet")
    assert r.returncode == 0, r.stderr.decode()
    p = pa.parquet.read_table(tmp_path / "pred.parquet")
    assert p.num_rows == len(RECORDS) and all(0.0 <= v <= 1.0 for v in p.column(model.label_names[0]).to_pylist())
    # finetune two updates, every layer group at its own learning rate
    rep = tmp_path / "ft.json"
    r = _ecgtool("-q", "finetune", seg, "-m", ckpt, "-l", raw / "labels.parquet", "-o", tmp_path / "ft.safetensors",
                 "--max-steps", "2", "--eval-every", "1", "--batch-size", "4", "--val-fraction", "0.25",
                 "--lr", "1e-3", "--lr-scales", "0.1,0.01", "--device", "cpu", "--report", rep)
    assert r.returncode == 0, r.stderr.decode()
    report = json.loads(rep.read_text())
    groups = report["lr_groups"]
    assert groups["head"]["lr"] == pytest.approx(1e-3) and groups["upper"]["lr"] == pytest.approx(1e-4)
    assert groups["lower"]["lr"] == pytest.approx(1e-5)
    # the finetuned model is named as itself, with the model it came from as its base
    r = _ecgtool("-q", "predict", "-m", tmp_path / "ft.safetensors", seg, "-o", tmp_path / "pred_ft.parquet")
    assert r.returncode == 0, r.stderr.decode()
    from ecgtool.io import read_table
    from ecgtool.models.native import read_metadata

    _, meta = read_table(str(tmp_path / "pred_ft.parquet"))
    assert meta.info["model"] == "ft.safetensors"
    prov = read_metadata(tmp_path / "ft.safetensors")["provenance"]
    assert prov["source"] == "ft.safetensors" and prov["base"]["spec"] == str(ckpt)
    # saliency: integrated gradients for every family, attention where the family has it
    methods = ["gradient"] + (["attention"] if model.has(ATTENTION) else [])
    for method in methods:
        r = _ecgtool("-q", "saliency", "-m", ckpt, seg, "--method", method, "--steps", "2",
                     "-o", tmp_path / f"sal-{method}.parquet")
        assert r.returncode == 0, (method, r.stderr.decode())
        s = pa.parquet.read_table(tmp_path / f"sal-{method}.parquet")
        sal = s.column("saliency")[0].as_py()
        assert len(sal) == len(c.leads) and np.isfinite(np.asarray(sal, dtype=np.float32)).all()
