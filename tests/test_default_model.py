"""The default model shipped in the package, its input preset, and predict without -m."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ecgtool.io import read_table

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "ecgtool" / "data" / "examples" / "ptbxl"
LABELS = ["NORM", "MI", "STTC", "CD", "HYP", "normal", "AF", "other rhythm", "noisy"]


@pytest.fixture(scope="module")
def default_model():
    from ecgtool.models.checkpoint import load_model
    from ecgtool.models.default import default_model_path

    path = default_model_path()
    assert path is not None, "ecgtool/data/models/default.safetensors is missing (examples/default-model/train.sh)"
    return path, load_model(str(path))


def test_shipped_model_loads_with_labels_and_contract(default_model):
    path, model = default_model
    assert path.stat().st_size <= 25 * 1024 * 1024
    assert model.family == "net1d"
    assert model.label_names == LABELS
    c = model.contract
    assert (c.fs, c.n_samples, c.normalisation, c.preset) == (250.0, 2500, "per-lead-zscore", "ecgtool-default")
    assert list(c.leads) == ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    thresholds = model.extra["thresholds"]
    assert len(thresholds) == len(LABELS) and all(0.0 < t < 1.0 for t in thresholds)
    assert model.extra["temperature"] > 0
    # the architecture registered as ecgtool-default, with its 9-output head
    from ecgtool.models.registry import create_model

    assert model.config == {**create_model("ecgtool-default").config, "n_classes": len(LABELS)}
    assert model.extra.get("conformal"), "calibrated on validation: conformal thresholds ship with the model"


def _predict(cli, src, out):
    res = cli(["predict", src, "-o", out])
    assert res.exit_code == 0, res.stderr
    table, meta = read_table(out)
    assert meta.info["label_names"] == LABELS
    return table, res


def _convert_preprocess(cli, src, tmp_path, *options):
    """``convert SRC`` then ``preprocess --preset ecgtool-default OPTIONS``: (raw path, table, meta)."""
    raw = tmp_path / "raw.parquet"
    assert cli(["convert", src, "-o", raw]).exit_code == 0
    seg = tmp_path / "seg.parquet"
    res = cli(["preprocess", "--preset", "ecgtool-default", *options, raw, "-o", seg])
    assert res.exit_code == 0, res.stderr
    return raw, seg, *read_table(seg)


def test_predict_without_model_on_bundled_examples(cli, tmp_path, default_model):
    table, _ = _predict(cli, EXAMPLES, tmp_path / "pred.parquet")
    ids = [str(r) for r in table.column("record_id").to_pylist()]
    assert sorted(ids) == ["00001_hr", "00139_hr", "00180_hr", "00351_hr"]
    probs = np.stack([np.asarray(table.column(n).to_pylist(), dtype=float) for n in LABELS], 1)
    assert np.isfinite(probs).all() and (probs >= 0).all() and (probs <= 1).all()
    # the records differ, and so do their predictions
    assert np.ptp(probs, axis=0).max() > 1e-3


def test_predict_with_lead_I_only(cli, tmp_path, default_model):
    raw, lead1, one, meta = _convert_preprocess(cli, EXAMPLES, tmp_path, "--leads", "I")
    assert one.column("leads").to_pylist()[0] == ["I"]
    full, _ = _predict(cli, raw, tmp_path / "full.parquet")
    single, res = _predict(cli, lead1, tmp_path / "single.parquet")
    assert "zero-filled" in res.stderr
    assert single.column("record_id").to_pylist() == full.column("record_id").to_pylist()
    p1 = np.stack([np.asarray(single.column(n).to_pylist(), dtype=float) for n in LABELS], 1)
    p12 = np.stack([np.asarray(full.column(n).to_pylist(), dtype=float) for n in LABELS], 1)
    assert np.isfinite(p1).all() and (p1 >= 0).all() and (p1 <= 1).all()
    # the other eleven leads carry information the model uses
    assert np.abs(p1 - p12).max() > 1e-3


def test_default_preset_renames_cinc2017_lead_and_rounds(cli, tmp_path, data_dir):
    import torch

    rec = data_dir / "cinc2017" / "A00001.hea"
    raw, seg, t, meta = _convert_preprocess(cli, rec, tmp_path, "--rename", "ECG=I")
    n = t.num_rows
    assert n == 30 // 10  # A00001: 9000 samples at 300 Hz = 30 s -> three 10 s windows
    assert t.column("segment").to_pylist() == list(range(n))
    assert t.column("fs").to_pylist() == [250.0] * n
    mask = np.asarray(t.column("lead_mask").to_pylist())
    assert mask[:, 0].all() and not mask[:, 1:].any()
    x = np.asarray(t.column("signal").to_pylist(), dtype=np.float32)
    assert x.shape == (n, 12, 2500)
    assert not x[:, 1:].any() and x[:, 0].std() > 0.5
    # without the rename its single lead 'ECG' is taken as lead I, with a warning naming the record
    res = cli(["preprocess", "--preset", "ecgtool-default", raw, "-o", tmp_path / "default.parquet"])
    assert res.exit_code == 0 and "A00001" in res.stderr and "taken as lead I" in res.stderr
    t2, _ = read_table(tmp_path / "default.parquet")
    assert t2.column("signal").to_pylist() == t.column("signal").to_pylist()
    # --precision bfloat16: exactly torch's bfloat16 rounding, kept as float32
    q = tmp_path / "q.parquet"
    res = cli(["preprocess", "--preset", "ecgtool-default", "--rename", "ECG=I", "--precision", "bfloat16",
               raw, "-o", q])
    assert res.exit_code == 0, res.stderr
    tq, _ = read_table(q)
    xq = np.asarray(tq.column("signal").to_pylist(), dtype=np.float32)
    assert np.array_equal(xq, torch.from_numpy(x).to(torch.bfloat16).float().numpy())
    assert not (xq.view(np.uint32) & 0xFFFF).any()
    assert not np.array_equal(xq, x)


def test_default_model_by_name_loads_the_shipped_weights():
    import torch

    from ecgtool.models.checkpoint import load_model
    from ecgtool.models.default import default_model_path

    by_name, by_path = load_model("ecgtool-default"), load_model(default_model_path())
    a, b = by_name.state_dict(), by_path.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert by_name.label_names == by_path.label_names


def test_recipe_merges_label_tables_of_both_datasets(cli, tmp_path, data_dir):
    """examples/default-model/merge_labels.py puts PTB-XL and CinC 2017 label tables side by side: each record
    keeps its own dataset's labels, the other dataset's are null (masked out of finetuning's loss)."""
    import subprocess
    import sys

    ref = tmp_path / "ref.csv"
    ref.write_text("record,label\n" + (data_dir / "cinc2017" / "REFERENCE.csv").read_text())
    heas = [data_dir / "ptbxl-500" / "records500" / "00000" / "00001_hr.hea", data_dir / "cinc2017" / "A00001.hea"]
    raw = tmp_path / "raw.parquet"
    res = cli(["convert", *heas, "--join", data_dir / "ptbxl-500" / "ptbxl_database.csv", "--join", ref, "-o", raw])
    assert res.exit_code == 0, res.stderr
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    assert cli(["label", raw, "--scp-column", "scp_codes", "--vocab", "ptbxl-superclass", "-o", a]).exit_code == 0
    assert cli(["label", raw, "--class-column", "label", "--vocab", "cinc2017", "-o", b]).exit_code == 0
    out = tmp_path / "labels.parquet"
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "default-model" / "merge_labels.py"), str(a), str(b),
                        "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    t, meta = read_table(out)
    assert meta.kind == "labels" and meta.label_names == LABELS
    rows = {rid: i for i, rid in enumerate(t.column("record_id").to_pylist())}
    ptb, cinc = rows["00001_hr"], rows["A00001"]
    assert t.column("NORM")[ptb].as_py() == 1 and t.column("normal")[ptb].as_py() is None
    assert t.column("normal")[cinc].as_py() == 1 and t.column("NORM")[cinc].as_py() is None
