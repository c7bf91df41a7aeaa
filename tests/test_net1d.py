"""Net1D (ECGFounder) and the released-checkpoint importer against fixtures made by the original code."""

from __future__ import annotations

import ast
import pickle
import re

import numpy as np
import pytest
import torch

from ecgtool.errors import CheckpointError
from ecgtool.models.checkpoint import load_model
from ecgtool.models.net1d import BN_KEY, Net1D, bn_parameter_count, ecgfounder_labels, import_ecgfounder
from ecgtool.models.registry import create_model

TOL = 1e-5


@pytest.fixture(scope="module")
def fx(reference_dir):
    return reference_dir / "fixtures" / "ecgfounder"


def _max_err(a: torch.Tensor, b: np.ndarray) -> float:
    assert tuple(a.shape) == b.shape
    return float(np.abs(a.detach().numpy().astype(np.float64) - b.astype(np.float64)).max())


@pytest.mark.parametrize("pth,npz", [("12_lead_reduced.pth", "io.npz"), ("1_lead_reduced.pth", "io_1lead.npz"),
                                     ("12_lead_reduced_numpy1.pth", "io.npz"),
                                     ("1_lead_reduced_numpy1.pth", "io_1lead.npz")])
def test_fixture_outputs_reproduce(fx, pth, npz):
    model, lines = import_ecgfounder(fx / pth)
    ref = np.load(fx / npz)
    x = torch.from_numpy(ref["x"])
    assert any("74 tensors loaded" in ln and "110 unused BatchNorm entries ignored" in ln for ln in lines)
    assert model.config["filter_list"] == [16, 32, 32, 48] and model.config["m_blocks_list"] == [2, 2, 1, 2]
    assert model.config["groups_width"] == 8 and model.config["n_classes"] == 7
    assert model.config["in_channels"] == x.shape[1]
    assert model.label_names is None  # 7 outputs: not the released 150-label head
    with torch.no_grad():
        inter = model.forward_intermediates(x)
        logits = model(x)
        feats = model.embed(x)
        seq = model.features(x)
    assert _max_err(logits, ref["logits"]) <= TOL
    assert _max_err(feats, ref["features"]) <= TOL
    assert torch.equal(seq.transpose(1, 2), inter[-1])
    names = ["stem_out"] + [f"stage{i}_out" for i in range(len(inter) - 1)]
    checked = 0
    for name, out in zip(names, inter):
        if name in ref:
            assert _max_err(out, ref[name]) <= TOL, name
            checked += 1
    assert checked == (5 if npz == "io.npz" else 1)


def test_dispatch_and_module_prefix(fx, tmp_path):
    ref = np.load(fx / "io.npz")
    x = torch.from_numpy(ref["x"])
    model = load_model(fx / "12_lead_reduced.pth")
    assert isinstance(model, Net1D) and model.extra["provenance"]["importer"] == "ecgfounder-pth"
    assert model.extra["provenance"]["val_auroc"] == pytest.approx(0.6123456789)
    # a DataParallel-style 'module.' prefix is stripped; a bare state dict is accepted too
    ckpt = torch.load(fx / "12_lead_reduced.pth", weights_only=False)
    bare = {"module." + k: v for k, v in ckpt["state_dict"].items()}
    torch.save(bare, tmp_path / "bare.pth")
    other = load_model(tmp_path / "bare.pth")
    with torch.no_grad():
        assert _max_err(other(x), ref["logits"]) <= TOL


def _parse_keys(path):
    """keys.txt -> ({key: shape} for the 12-lead model, header lines)."""
    keys, header = {}, []
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            header.append(line)
            continue
        if line.strip():
            name, shape, _dtype = line.split("\t")
            keys[name] = tuple(ast.literal_eval(shape))
    return keys, header


def test_full_size_keys_parameters_and_shapes(fx):
    keys, header = _parse_keys(fx / "keys.txt")
    bn = {k for k in keys if BN_KEY.match(k)}
    live = {k: v for k, v in keys.items() if k not in bn}
    assert len(keys) == 509 and len(bn) == 305 and len(live) == 204
    file_params = int(re.search(r"; ([\d,]+) parameters", header[1]).group(1).replace(",", ""))
    with torch.device("meta"):
        m12 = create_model("ecgfounder-12lead")
        m1 = create_model("ecgfounder-1lead")
    ours = {k: tuple(v.shape) for k, v in m12.state_dict().items()}
    assert ours == live
    n12 = sum(p.numel() for p in m12.parameters())
    bn_params = sum(int(np.prod(s)) for k, s in keys.items() if k in bn and k.endswith((".weight", ".bias")))
    assert bn_parameter_count(m12.config) == bn_params
    assert n12 + bn_params == file_params == m12.card.released_file_parameters
    line1 = next(h for h in header if h.startswith("# 1-lead full-size"))
    n1_file = int(re.search(r"; ([\d,]+) parameters", line1).group(1).replace(",", ""))
    assert sum(p.numel() for p in m1.parameters()) + bn_params == n1_file
    assert tuple(m1.state_dict()["first_conv.conv.weight"].shape) == (64, 1, 16)
    # stem and stage lengths, run on the meta device (shapes only)
    shapes = ast.literal_eval(re.search(r"stem\+stage outputs (\[.*\])", header[1]).group(1))
    with torch.no_grad():
        inter = m12.forward_intermediates(torch.empty(1, 12, 5000, device="meta"))
        assert tuple(m12(torch.empty(1, 12, 5000, device="meta")).shape) == (1, 150)
    assert [tuple(t.shape) for t in inter] == [tuple(s) for s in shapes]
    assert m12.output_length(5000) == shapes[-1][-1]
    assert m12.label_names == list(ecgfounder_labels()) and len(m12.label_names) == 150


def test_label_names_match_reference(reference_dir):
    ref = (reference_dir / "ecgfounder-labels.txt").read_text().splitlines()
    assert list(ecgfounder_labels()) == ref


def test_truncated_and_random_files_refused(fx, tmp_path):
    data = (fx / "12_lead_reduced.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "noise.pth").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match="cut.pth"):
        import_ecgfounder(tmp_path / "cut.pth")
    with pytest.raises(CheckpointError, match="cut.pth"):
        load_model(tmp_path / "cut.pth")
    with pytest.raises(CheckpointError, match="noise.pth"):
        import_ecgfounder(tmp_path / "noise.pth")
    with pytest.raises(CheckpointError, match="not a model checkpoint"):
        load_model(tmp_path / "noise.pth")


class _Planted:
    """Unpickling this object opens (creates) a file: a stand-in for code execution."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_that_runs_code_is_refused(fx, tmp_path):
    marker = tmp_path / "pwned"
    ckpt = torch.load(fx / "12_lead_reduced.pth", weights_only=False)
    ckpt["val_auroc"] = _Planted(str(marker))
    torch.save(ckpt, tmp_path / "evil.pth")
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"state_dict": _Planted(str(marker))}, f)
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        import_ecgfounder(tmp_path / "evil.pth")
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "evil.pth")
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "evil.pkl")
    assert not marker.exists()
    # control: an unrestricted load of the same file does create the marker
    torch.load(tmp_path / "evil.pth", weights_only=False)
    assert marker.exists()


def _mutated(fx, tmp_path, change):
    ckpt = torch.load(fx / "12_lead_reduced.pth", weights_only=False)
    change(ckpt["state_dict"])
    path = tmp_path / "mutant.pth"
    torch.save(ckpt, path)
    return path


def test_missing_extra_and_misshaped_keys_listed(fx, tmp_path):
    def missing(sd):
        del sd["stage_list.1.block_list.0.se_fc1.bias"]
        del sd["dense.bias"]

    with pytest.raises(CheckpointError) as e:
        import_ecgfounder(_mutated(fx, tmp_path, missing))
    assert "2 missing" in str(e.value) and "se_fc1.bias" in str(e.value) and "dense.bias" in str(e.value)

    def extra(sd):
        sd["stage_list.0.block_list.0.gate.weight"] = torch.zeros(3)
        sd["head2.bias"] = torch.zeros(3)

    with pytest.raises(CheckpointError) as e:
        import_ecgfounder(_mutated(fx, tmp_path, extra))
    assert "2 unexpected" in str(e.value) and "head2.bias" in str(e.value) and "gate.weight" in str(e.value)

    def misshaped(sd):
        sd["dense.bias"] = torch.zeros(8)
        sd["stage_list.2.block_list.0.se_fc2.weight"] = torch.zeros(32, 15)

    with pytest.raises(CheckpointError) as e:
        import_ecgfounder(_mutated(fx, tmp_path, misshaped))
    msg = str(e.value)
    assert "2 mis-shaped" in msg and "dense.bias (8,) (expected (7,))" in msg and "se_fc2.weight" in msg

    def bad_stage(sd):
        for k in [k for k in sd if k.startswith("stage_list.1.")]:
            sd[k.replace("stage_list.1.", "stage_list.5.")] = sd.pop(k)

    with pytest.raises(CheckpointError, match="stage indices"):
        import_ecgfounder(_mutated(fx, tmp_path, bad_stage))


def test_bn_keys_are_the_only_ones_ignored(fx, tmp_path):
    # a BN-like key outside the explicit pattern is not silently dropped
    def odd_bn(sd):
        sd["stage_list.0.block_list.0.bn4.weight"] = torch.zeros(16)

    with pytest.raises(CheckpointError, match="bn4.weight"):
        import_ecgfounder(_mutated(fx, tmp_path, odd_bn))


def test_pool_with_padding_mask(fx):
    model = load_model(fx / "12_lead_reduced.pth")
    x = torch.from_numpy(np.load(fx / "io.npz")["x"][:2])
    with torch.no_grad():
        feats = model.features(x)  # (2, 157, 48)
    assert feats.shape == (2, 157, 48)
    mask = torch.zeros(2, 5000, dtype=torch.bool)
    mask[1, 2500:] = True  # second record: last 5 s are padding
    pooled = model.pool(feats, mask)
    assert torch.allclose(pooled[0], feats[0].mean(0))
    # 2500 of 5000 samples -> the first ceil(157 / 2) = 79 frames are real
    assert torch.allclose(pooled[1], feats[1, :79].mean(0))
    frame_mask = torch.arange(157)[None, :].repeat(2, 1) >= torch.tensor([[157], [79]])
    assert torch.equal(model.pool(feats, frame_mask), pooled)
