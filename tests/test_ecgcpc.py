"""ECG-CPC (conv encoder + causal S4) and its Lightning-checkpoint importer against fixtures made by the original code."""

from __future__ import annotations

import ast
import os

import numpy as np
import pytest
import torch

from ecgtool.errors import CheckpointError, UsageError
from ecgtool.models.checkpoint import load_model
from ecgtool.models.ecgcpc import ECGCPC, STUBS, import_ecgcpc, infer_config
from ecgtool.models.registry import create_model
from ecgtool.models.serial import safe_load

TOL = 1e-5
INPUTS = {"x", "x_500hz", "ecg_ids", "window_index", "window_start_500hz", "x_10s"}
STANDARD_12 = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors: one thread is faster than two fighting over a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def fx(reference_dir):
    return reference_dir / "fixtures" / "ecgcpc"


@pytest.fixture(scope="module")
def ref(fx):
    return dict(np.load(fx / "io.npz"))


@pytest.fixture(scope="module")
def model_ssl(fx):
    model, _ = import_ecgcpc(fx / "last_reduced.ckpt", ssl_head=True)
    return model


@pytest.fixture(scope="module")
def state(fx):
    """The fixture's state dict and top-level facts, read without running its pickle."""
    ck = safe_load(fx / "last_reduced.ckpt", stubs=STUBS)
    return {k: v.clone() for k, v in ck["state_dict"].items()}


def _err(a: torch.Tensor, b: np.ndarray) -> float:
    assert tuple(a.shape) == b.shape
    return float(np.abs(a.detach().numpy().astype(np.float64) - b.astype(np.float64)).max())


def test_every_fixture_array_reproduces(model_ssl, ref):
    x = torch.from_numpy(ref["x"])
    checked = set()
    with torch.no_grad():
        out = model_ssl.forward_intermediates(x)
        for name in ("enc_layer0_out", "enc_out", "s4_kernel0", "s4_layer0_y", "s4_block0_out", "features",
                     "pooled", "head_ssl_out"):
            assert _err(out[name], ref[name]) <= TOL, name
            checked.add(name)
        assert torch.equal(model_ssl.features(x), out["features"])
        assert torch.allclose(model_ssl.embed(x), out["pooled"], atol=1e-7)  # mean over time
        x10 = torch.from_numpy(ref["x_10s"])
        assert _err(model_ssl.features(x10), ref["features_10s"]) <= TOL
        assert _err(model_ssl.embed(x10), ref["pooled_10s"]) <= TOL
        assert _err(model_ssl.stack.s4_layers[0].kernel(1200), ref["s4_kernel0_10s"]) <= TOL
        checked |= {"features_10s", "pooled_10s", "s4_kernel0_10s"}
        torch.manual_seed(0)
        loss, acc = model_ssl.cpc_loss(x)  # the same torch.randint negatives as the original
    assert abs(float(loss) - float(ref["cpc_loss_seed0"])) <= TOL * max(1.0, abs(float(ref["cpc_loss_seed0"])))
    assert abs(float(acc) - float(ref["cpc_acc_seed0"])) <= TOL
    checked |= {"cpc_loss_seed0", "cpc_acc_seed0"}
    assert checked == set(ref) - INPUTS


def test_longer_input_never_changes_the_model(model_ssl, ref):
    """Beyond the 1200-token grid the kernel uses a doubled grid in temporaries: the state dict stays as it
    was, the causal model gives the 10-s features on the first 1200 tokens, and 2.5-s outputs stay right."""
    before = {k: v.clone() for k, v in model_ssl.state_dict().items()}
    x10 = torch.from_numpy(ref["x_10s"])
    longer = torch.cat([x10, x10[..., :600]], dim=-1)  # 12.5 s -> 1500 tokens > Lg = 1200
    with torch.no_grad():
        feats = model_ssl.features(longer)
        kernel = model_ssl.stack.s4_layers[0].kernel(1500)
    assert feats.shape == (1, 1500, 36)
    assert _err(feats[:, :1200], ref["features_10s"]) <= TOL
    assert _err(kernel[..., :1200], ref["s4_kernel0_10s"]) <= TOL
    after = model_ssl.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        assert _err(model_ssl.features(torch.from_numpy(ref["x"])), ref["features"]) <= TOL


def test_released_layout_imports_via_load_model_and_cli(cli, fx, ref, tmp_path):
    x = torch.from_numpy(ref["x"])
    for src in (fx / "last_reduced.ckpt", fx):  # the .ckpt, and the folder with its YAML beside it
        model = load_model(src)
        assert isinstance(model, ECGCPC) and model.ts_encoder.head_ssl is None  # dropped, as the benchmark does
        prov = model.extra["provenance"]
        assert prov["importer"] == "ecgcpc-ckpt" and prov["global_step"] == 12 and prov["grid_length"] == 1200
        assert model.config["enc_features"] == [20, 28, 44, 36] and model.config["enc_strides"] == [2, 1, 1, 1]
        assert sum(p.numel() for p in model.parameters()) == 17888 - 36 * 36
        c = model.contract
        assert (c.fs, c.n_samples, c.normalisation, list(c.leads), c.preset) == (240.0, 600, "none", STANDARD_12,
                                                                                  "ecg-cpc")
        out = tmp_path / f"{src.name}.safetensors"
        res = cli(["models", "import", src, "-o", out])
        assert res.exit_code == 0, res.stdout
        native = load_model(out)
        assert native.config == model.config
        with torch.no_grad():
            f0, f1 = model.features(x), native.features(x)
        assert torch.equal(f0, f1)  # bit for bit
        assert _err(f0, ref["features"]) <= TOL
    assert load_model(fx).extra["provenance"]["config_file"] == "config_last_reduced_ckpt.yaml"


def _keys_txt(fx) -> dict[str, tuple[tuple[int, ...], str]]:
    keys: dict = {}
    for line in (fx / "keys.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, shape, _dtype, kind = line.split("\t")
        keys.setdefault(name, (tuple(ast.literal_eval(shape)), kind))  # the 10-s shapes come first
    return keys


def test_full_size_keys_shapes_and_parameter_counts(fx):
    from ecgtool.models.card import card

    keys = _keys_txt(fx)
    with torch.device("meta"):
        base = create_model("ecgcpc-base")
        with_ssl = create_model("ecgcpc-base", ssl_head=True)
        tiny = create_model("ecgcpc-tiny")
    buffers = dict(with_ssl.named_buffers())
    ours = {k: (tuple(v.shape), "buffer" if k in buffers else "param") for k, v in with_ssl.state_dict().items()}
    assert ours == keys and len(keys) == 77
    n_base = sum(p.numel() for p in base.parameters())
    assert n_base == 2_932_736 == card("ecgcpc-base").parameters
    assert sum(p.numel() for p in with_ssl.parameters()) == 3_194_880 == card("ecgcpc-base").released_file_parameters
    assert sum(p.numel() for p in tiny.parameters()) == card("ecgcpc-tiny").parameters < 300_000
    assert base.output_length(600) == 300 and base.output_length(2400) == 1200


def _write(tmp_path, obj, name="mutant.ckpt"):
    path = tmp_path / name
    torch.save(obj, path)
    return path


def test_bare_state_dict_and_mutants(state, ref, tmp_path):
    # a Lightning-like dict without hyper_parameters: the strides are assumed (and said so)
    model, lines = import_ecgcpc(_write(tmp_path, {"state_dict": state}))
    assert any("strides assumed [2, 1, 1, 1]" in ln for ln in lines)
    with torch.no_grad():
        assert _err(model.features(torch.from_numpy(ref["x"])), ref["features"]) <= TOL
    # one tensor removed and one mis-shaped: both named in one error
    bad = dict(state)
    del bad["ts_encoder.predictor.predictor.s4_layers.2.kernel.kernel.Q"]
    bad["ts_encoder.predictor.predictor.norms.1.weight"] = torch.zeros(35)
    with pytest.raises(CheckpointError) as e:
        load_model(_write(tmp_path, {"state_dict": bad}))
    msg = str(e.value)
    assert "1 missing" in msg and "s4_layers.2.kernel.kernel.Q" in msg
    assert "1 mis-shaped" in msg and "norms.1.weight (35,) (expected (36,))" in msg
    # the CPC head asked for but absent
    no_ssl = {k: v for k, v in state.items() if "head_ssl" not in k}
    with pytest.raises(CheckpointError, match="head_ssl.proj.0.weight"):
        import_ecgcpc(_write(tmp_path, {"state_dict": no_ssl}), ssl_head=True)
    # unknown settings are refused by name
    with pytest.raises(CheckpointError, match="d_model"):
        import_ecgcpc(_write(tmp_path, {"state_dict": state}), d_model=64)


def test_stored_config_that_the_module_does_not_implement_is_refused(state):
    with pytest.raises(CheckpointError, match="causal"):
        infer_config(state, {"ts": {"pred": {"causal": False}}}, "f.ckpt")
    with pytest.raises(CheckpointError, match="kss"):
        infer_config(state, {"ts": {"enc": {"kss": [5, 1, 1, 1], "strides": [2, 1, 1, 1]}}}, "f.ckpt")


class _RunsCode:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused(state, tmp_path):
    marker = tmp_path / "pwned"
    path = _write(tmp_path, {"state_dict": state, "hyper_parameters": _RunsCode(str(marker))}, "evil.ckpt")
    with pytest.raises(CheckpointError, match=r"refused to unpickle.*system"):
        import_ecgcpc(path)
    with pytest.raises(CheckpointError, match="system"):
        load_model(path)
    assert not marker.exists()


def test_tiny_builds_trains_and_pools():
    torch.manual_seed(0)
    model = create_model("ecgcpc-tiny")
    x = torch.randn(2, 12, 600)
    x[0, 3, 10] = float("nan")  # NaN is set to 0, as the original does
    model.eval()
    with torch.no_grad():
        feats = model.features(x)
        assert feats.shape == (2, 300, 64) and torch.isfinite(feats).all()
        assert torch.equal(model.embed(x), feats.mean(1))
        assert model.features(x, layer=0).shape == (2, 300, 64)
        mask = torch.zeros(2, 600, dtype=torch.bool)
        mask[1, 300:] = True
        assert torch.allclose(model.embed(x, mask)[1], feats[1, :150].mean(0))
        # causal: what follows a step does not change it
        x2 = x.clone()
        x2[..., 301:] = 0
        assert torch.allclose(model.features(x2)[:, :150], feats[:, :150], atol=1e-5)
    model.reset_classifier(3)
    assert model.config["n_classes"] == 3 and model.logits(x).shape == (2, 3)
    groups = model.parameter_groups()
    assert sum(len(v) for v in groups.values()) == len(list(model.parameters()))
    model.train()
    loss = model.logits(x).square().mean()
    loss.backward()
    assert model.ts_encoder.predictor.predictor.s4_layers[0].kernel.kernel.C.grad is not None
    trainable = model.freeze("frozen-features")
    assert all(not p.requires_grad for p in model.ts_encoder.encoder.parameters()) and trainable
    with pytest.raises((UsageError, ValueError), match="d_model"):  # an unknown config field, named
        create_model("ecgcpc-tiny", d_model=3)


def test_preset_gives_the_contract(cli, data_dir, ref, tmp_path):
    from ecgtool.io import batch_signal_array, open_table
    from ecgtool.models.card import presets
    from ecgtool.preprocess import Preprocessor, make_config

    heas = [data_dir / "ptbxl-500" / "records500" / "00000" / f"{i:05d}_hr.hea" for i in (1, 9, 17)]
    rec = tmp_path / "rec.parquet"
    assert cli(["convert", *heas, "-o", rec]).exit_code == 0
    contract = create_model("ecgcpc-tiny").contract
    assert contract.preset == "ecg-cpc"
    assert presets()["ecg-cpc"]["segment_s"] == 2.5 and presets()["ecg-cpc"]["fs"] == 240
    try:
        cfg = make_config("ecg-cpc")
    except UsageError as exc:
        pytest.xfail(f"a setting of the ecg-cpc preset is not in preprocess yet: {exc}")
    pre = Preprocessor(cfg)
    with open_table(rec) as r:
        (out,) = [b for b in (pre.process(batch) for batch in r) if b is not None]
    x = batch_signal_array(out)
    assert x.shape == (12, len(contract.leads), contract.n_samples) and x.dtype == np.float32  # 4 windows each
    assert out.column(out.schema.get_field_index("leads")).to_pylist()[0] == list(contract.leads)
    assert out.column(out.schema.get_field_index("segment")).to_pylist() == [0, 1, 2, 3] * 3
    assert pre.fs == contract.fs == 240 and cfg.normalisation == contract.normalisation == "none"
    # the fixture windows (ecg 1 w0, ecg 9 w1, ecg 17 w3), resampled per window by resampy in the original:
    # the whole-record polyphase resampling departs by < 0.1 mV (at the window edges), raw mV otherwise
    picked = x[[0, 5, 11]]
    assert float(np.abs(picked - ref["x"]).max()) < 0.1
    assert float(np.abs(picked - ref["x"])[..., 20:-20].max()) < 0.02
