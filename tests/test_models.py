"""Every registered model, native checkpoints, load_model dispatch and errors, the `models` command."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from ecgtool.errors import CheckpointError, InputError, UsageError
from ecgtool.models import list_models, model_info
from ecgtool.models.checkpoint import describe_model, load_model, sniff
from ecgtool.models.devices import resolve_device
from ecgtool.models.native import load_checkpoint, read_metadata, save_checkpoint
from ecgtool.models.registry import create_model

# Published parameter counts of the released configurations (../shared/reference/*.md).
PUBLISHED = {
    "ecgfm-base": 90_883_072,
    "ecgfm-large": 311_940_352,
    "ecgfounder-12lead": 30_819_014 - 66_368,  # released file minus its unused BatchNorm
    "ecgfounder-1lead": 30_807_750 - 66_368,
}


@pytest.mark.parametrize("name", ["ecgfm-tiny", "ecgfounder-tiny"])
def test_safetensors_round_trip(name, tmp_path):
    if name not in list_models():
        pytest.skip(f"{name} is not registered in this tree")
    torch.manual_seed(1)
    model = create_model(name).eval()
    c = model.contract
    x = torch.randn(2, len(c.leads), c.n_samples)
    k = model(x).shape[-1]
    path = save_checkpoint(model, tmp_path / "m.safetensors", thresholds=np.full(k, 0.25), temperature=1.7,
                           provenance={"source": "unit", "importer": None}, note="kept")
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temporary file
    back = load_model(path)
    assert type(back) is type(model) and back.config == model.config and back.contract == model.contract
    assert back.label_names == model.label_names
    assert back.extra["thresholds"] == [0.25] * k and back.extra["temperature"] == 1.7
    assert back.extra["provenance"]["source"] == "unit" and back.extra["note"] == "kept"
    with torch.no_grad():
        assert torch.equal(back(x), model(x))
    meta = read_metadata(path)
    assert meta["family"] == model.family and meta["provenance"]["saved_by"].startswith("ecgtool")
    assert sniff(path) == "safetensors"


def test_imported_ecgfounder_round_trip_on_ptbxl(reference_dir, tmp_path):
    fx = reference_dir / "fixtures" / "ecgfounder"
    ref = np.load(fx / "io.npz")
    model = load_model(fx / "12_lead_reduced.pth")
    save_checkpoint(model, tmp_path / "f.safetensors")
    back = load_checkpoint(tmp_path / "f.safetensors")
    x = torch.from_numpy(ref["x"])
    with torch.no_grad():
        assert torch.equal(back(x), model(x))
        assert np.abs(back(x).numpy() - ref["logits"]).max() <= 1e-5
    prov = back.extra["provenance"]
    assert prov["sha256"] == hashlib.sha256((fx / "12_lead_reduced.pth").read_bytes()).hexdigest()
    assert prov["source"] == "12_lead_reduced.pth" and prov["importer"] == "ecgfounder-pth"


def test_load_model_dispatch(reference_dir, tmp_path):
    fx = reference_dir / "fixtures"
    assert sniff(fx / "ecgfounder" / "1_lead_reduced.pth") == "ecgfounder-pth"
    assert load_model(fx / "ecgfounder" / "1_lead_reduced.pth").contract.leads == ("I",)
    # content decides, not the name: an ECGFounder file called .pt, a fairseq file called .pth
    (tmp_path / "x.pt").write_bytes((fx / "ecgfounder" / "12_lead_reduced.pth").read_bytes())
    assert load_model(tmp_path / "x.pt").family == "net1d"
    if (fx / "ecgfm" / "finetuned.pt").exists() and "ecgfm-tiny" in list_models():
        (tmp_path / "y.pth").write_bytes((fx / "ecgfm" / "finetuned.pt").read_bytes())
        assert sniff(tmp_path / "y.pth") == "fairseq-signals-pt"
        assert load_model(tmp_path / "y.pth").family == "ecgfm"
    # a registry name: random weights only on request
    with pytest.raises(CheckpointError, match="carries no trained weights"):
        load_model("ecgfounder-tiny")
    m = load_model("ecgfounder-tiny", allow_random=True, n_classes=5)
    assert m.config["n_classes"] == 5 and m.label_names is None and not m.training
    with pytest.raises(UsageError, match="did you mean"):
        load_model("ecgfounder-tinny")
    with pytest.raises(InputError, match="no such checkpoint"):
        load_model(tmp_path / "absent.safetensors")
    with pytest.raises(CheckpointError, match="not a model checkpoint"):
        load_model(fx / "ecgfounder" / "io.npz")


def test_bad_native_checkpoints(tmp_path):
    from safetensors.torch import save_file

    model = create_model("ecgfounder-tiny")
    path = save_checkpoint(model, tmp_path / "ok.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match="cut.safetensors.*truncated"):
        load_model(tmp_path / "cut.safetensors")
    save_file({"w": torch.zeros(3)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="without ecgtool metadata"):
        load_model(tmp_path / "plain.safetensors")
    # metadata whose config does not match the tensors: rewrite the header with 5 outputs
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = json.loads(header["__metadata__"]["ecgtool"])
    meta["config"]["n_classes"] = 5
    meta["label_names"] = None
    header["__metadata__"]["ecgtool"] = json.dumps(meta)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    (tmp_path / "bad.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])
    with pytest.raises(CheckpointError, match=r"mis-shaped: dense.weight \(150, 48\) \(expected \(5, 48\)\)"):
        load_model(tmp_path / "bad.safetensors")
    meta["family"] = "resnet"
    header["__metadata__"]["ecgtool"] = json.dumps(meta)
    raw = json.dumps(header).encode()
    (tmp_path / "fam.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])
    with pytest.raises(CheckpointError, match="unknown model family 'resnet'"):
        load_model(tmp_path / "fam.safetensors")


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UsageError, match="expected auto, cpu, cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_models_cli_list(cli):
    r = cli(["models"])
    assert r.exit_code == 0
    for name in list_models():
        assert name in r.stdout
    assert "30,752,646 (30,819,014 in file*)" in r.stdout and "66,368" in r.stdout
    line = next(l for l in r.stdout.splitlines() if l.startswith("ecgfounder-1lead "))
    assert " I " in line and "5000 (10 s)" in line and "record-zscore" in line and "150 labels" in line
    r = cli(["models", "--json"])
    rows = json.loads(r.stdout)
    assert [d["name"] for d in rows] == list_models()
    d = next(d for d in rows if d["name"] == "ecgfounder-12lead")
    assert d["parameters"] == PUBLISHED["ecgfounder-12lead"] and d["released_file_parameters"] == 30_819_014
    assert d["fs"] == 500 and d["n_samples"] == 5000 and d["normalisation"] == "record-zscore"


def test_models_cli_info_and_import(cli, reference_dir, tmp_path):
    src = reference_dir / "fixtures" / "ecgfounder" / "12_lead_reduced.pth"
    r = cli(["models", "import", src, "-o", tmp_path / "m.safetensors"])
    assert r.exit_code == 0, r.output
    assert "74 tensors loaded" in r.stdout and "110 unused BatchNorm entries ignored" in r.stdout
    assert "val_auroc=0.6123456789" in r.stdout and (tmp_path / "m.safetensors").exists()
    r = cli(["models", "info", tmp_path / "m.safetensors", "--json"])
    d = json.loads(r.stdout)
    assert d["provenance"]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert d["config"]["filter_list"] == [16, 32, 32, 48] and d["random_weights"] is False
    r = cli(["models", "info", "ecgfounder-1lead"])
    assert r.exit_code == 0 and "leads: I\n" in r.stdout and "30,807,750" in r.stdout
    assert "ABNORMAL ECG" in r.stdout
    assert describe_model("ecgfounder-12lead")["label_names"][7] == "otherwise normal ecg"


def test_models_cli_errors(cli, tmp_path):
    bad = tmp_path / "junk.pth"
    bad.write_bytes(b"not a checkpoint at all" * 10)

    def run(*args):
        return subprocess.run([sys.executable, "-m", "ecgtool", *map(str, args)], capture_output=True, text=True)

    r = run("models", "import", bad, "-o", tmp_path / "o.safetensors")
    assert r.returncode == 1 and "junk.pth" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "o.safetensors").exists()
    r = cli(["models", "info", "nosuchmodel"])
    assert r.exit_code == 2 and "unknown model 'nosuchmodel'" in r.stderr
    # the CLI package itself stays light
    r = subprocess.run([sys.executable, "-c", "import sys, ecgtool.cli; print('torch' in sys.modules)"],
                       capture_output=True, text=True)
    assert r.stdout.strip() == "False", r.stderr


def test_models_import_with_label_names(cli, reference_dir, tmp_path):
    # fairseq-signals files carry no label names: --labels attaches them, and predict
    # then names its columns after them instead of label_0..label_4
    from ecgtool.models.checkpoint import load_model

    ft = reference_dir / "fixtures" / "ecgfm" / "finetuned.pt"
    out = tmp_path / "ft.safetensors"
    r = cli(["models", "import", ft, "--label-names", "NORM, MI,STTC,CD,HYP", "-o", out])
    assert r.exit_code == 0, r.output
    assert "label names: NORM, MI, STTC, CD, … (5)" in r.stdout
    assert load_model(out).label_names == ["NORM", "MI", "STTC", "CD", "HYP"]
    names = tmp_path / "names.txt"
    names.write_text("# outputs in order\n" + "\n".join(f"finding {k}" for k in range(7)) + "\n")
    pth = reference_dir / "fixtures" / "ecgfounder" / "12_lead_reduced.pth"
    r = cli(["models", "import", pth, "--label-names", names, "-o", tmp_path / "f.safetensors"])
    assert r.exit_code == 0, r.output
    assert load_model(tmp_path / "f.safetensors").label_names == [f"finding {k}" for k in range(7)]
    # a wrong count, a model without a head, repeated names: usage errors, nothing written
    for src, spec in ((ft, "mimic-iv-ecg"), (reference_dir / "fixtures" / "ecgfm" / "pretrained.pt", "A,B"),
                      (ft, "A,A,B,C,D")):
        r = cli(["models", "import", src, "--label-names", spec, "-o", tmp_path / "bad.safetensors"])
        assert r.exit_code == 2, r.output
        assert not (tmp_path / "bad.safetensors").exists()
    r = cli(["models", "import", ft, "--label-names", "mimic-iv-ecg", "-o", tmp_path / "bad.safetensors"])
    assert "17 names for the 5 outputs" in r.stderr
