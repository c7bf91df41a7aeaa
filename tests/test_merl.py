"""MERL (ResNet18-1D + ECGCLIP's ECG heads) and its two released layouts, against fixtures made by the original code.

Both contracts are checked: MERL's own (10 s, min-max over the whole 12 x 5000
array, MIMIC lead order; attention-pooled 256-d embedding) and the ICLR-2026
benchmark's (2.5 s windows in raw mV, canonical lead order; mean pooling).
"""

from __future__ import annotations

import ast
import os

import numpy as np
import pytest
import torch

from ecgtool.errors import CheckpointError, UsageError
from ecgtool.models import merl as M
from ecgtool.models.card import card
from ecgtool.models.checkpoint import load_model
from ecgtool.models.native import load_checkpoint
from ecgtool.models.registry import create_model

INPUTS = {"x", "x_2p5s", "x_2p5s_mv", "ecg_ids", "zeroshot_classes", "text_pooler_in"}
MIMIC_ORDER = ["I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6"]
STANDARD_12 = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def fx(reference_dir):
    return reference_dir / "fixtures" / "merl"


@pytest.fixture(scope="module")
def ref(fx):
    return dict(np.load(fx / "io.npz"))


def _err(a: torch.Tensor | np.ndarray, b: np.ndarray) -> float:
    a = a.detach().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def _ok(name: str, a, ref: dict, errors: dict) -> None:
    """The fixture's tolerance: max |a - b| <= 1e-5 * max(1, max |b|) (README of the fixture)."""
    b = ref[name]
    errors[name] = _err(a, b)
    assert errors[name] <= 1e-5 * max(1.0, float(np.abs(b).max())), (name, errors[name])


def _ckpt_outputs(model: M.MerlResNet, x: torch.Tensor, pooler: np.ndarray, proj_t: dict) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        it = model.forward_intermediates(x)
        e1, e2 = model.uma_embeddings(x)
        cls = M.class_embeddings(torch.from_numpy(pooler), proj_t)
        out = {
            "stem_out": it["stem"], "layer1_out": it["layer1"], "layer2_out": it["layer2"],
            "layer3_out": it["layer3"], "features": model.features(x, layer=3).transpose(1, 2),
            "pooled": model.pooled_features(x), "downconv_out": model.features(x).transpose(1, 2),
            "att_map": model.attention_map(x), "proj_ecg_emb": model.embed(x),
            "proj_ecg_emb_norm": model.zeroshot_embedding(x), "ecg_emb1": e1, "ecg_emb2": e2,
        }
        assert torch.equal(it["layer4"], out["features"]) and torch.equal(it["downconv"], out["downconv_out"])
        out["logits"] = model(x)  # GAP -> the ResNet's `linear` (finetune/models/resnet1d.py)
        out["class_emb"] = cls
        out["zeroshot_logits"] = M.zeroshot_scores(out["proj_ecg_emb"], cls)
    return out


# --------------------------------------------------------------------------- (a) every array of io.npz


def test_every_fixture_array_reproduces(fx, ref):
    errors: dict[str, float] = {}
    x = torch.from_numpy(ref["x"])
    # MERL's own contract: the ECGCLIP checkpoint (the untrained `linear` kept only to check `logits`)
    ckpt = load_model(fx / "res18_ckpt_reduced.pth", linear_head=True)
    assert ckpt.config["widths"] == [16, 24, 32, 48] and ckpt.config["projection_size"] == 28
    assert ckpt.config["spacial_dim"] == 313 and ckpt.config["heads"] == 4 and ckpt.config["n_classes"] == 10
    proj_t = M.text_projection(fx / "res18_ckpt_reduced.pth")
    for name, value in _ckpt_outputs(ckpt, x, ref["text_pooler_in"], proj_t).items():
        _ok(name, value, ref, errors)
    # the encoder file under the benchmark's contract (mean pooling), on both 2.5 s inputs
    enc = load_model(fx / "res18_encoder_reduced.pth", linear_head=True)
    with torch.no_grad():
        for suffix in ("_2p5s", "_2p5s_mv"):
            xs = torch.from_numpy(ref["x" + suffix])
            _ok("features" + suffix, enc.features(xs).transpose(1, 2), ref, errors)
            _ok("pooled" + suffix, enc.embed(xs), ref, errors)
        assert _err(enc.embed(x), ref["pooled"]) <= 1e-6
        assert _err(enc(x), ref["logits"]) <= 1e-5
    # the inputs: x_2p5s is x cut to 2.5 s (x and x_2p5s_mv are rebuilt from raw records in the preset tests)
    assert np.array_equal(ref["x_2p5s"], ref["x"][..., :1250])
    assert list(ref["ecg_ids"]) == [1, 9, 17] and list(ref["zeroshot_classes"]) == ["NORM", "MI", "STTC", "CD", "HYP"]
    assert set(errors) == set(ref) - INPUTS, sorted(set(ref) - INPUTS - set(errors))
    assert max(errors.values()) <= 1e-6


def test_embed_per_variant_and_the_313_token_trap(fx, ref):
    ckpt = load_model(fx / "res18_ckpt_reduced.pth")
    enc = load_model(fx / "res18_encoder_reduced.pth")
    assert ckpt.get_classifier() is None and enc.get_classifier() is None  # the untrained `linear` is skipped
    assert ckpt.extra["provenance"]["variant"] == "merl-resnet18"
    assert enc.extra["provenance"]["variant"] == "merl-resnet18-bench"
    assert ckpt.contract == card("merl-resnet18").contract and enc.contract == card("merl-resnet18-bench").contract
    assert list(ckpt.contract.leads) == MIMIC_ORDER and list(enc.contract.leads) == STANDARD_12
    x = torch.from_numpy(ref["x"])
    with torch.no_grad():
        # MERL's contract: embed() = ext_ecg_emb (attention pool, not normalised), 28-d here, 256 at full size
        assert ckpt.embed_dim == 28 and ckpt.feature_dim(3) == 48 and ckpt.num_layers == 5
        assert _err(ckpt(x), ref["proj_ecg_emb"]) <= 1e-6
        assert _err(ckpt.pool(ckpt.features(x)), ref["proj_ecg_emb"]) <= 1e-6
        # a lower layer is mean-pooled; the benchmark encoder's embed() is the time-mean of layer4
        assert _err(ckpt.pool(ckpt.features(x, layer=-2)), ref["pooled"]) <= 1e-6
        assert enc.embed_dim == 48 and enc.num_layers == 4 and _err(enc(x), ref["pooled"]) <= 1e-6
        with pytest.raises(ValueError, match="exactly 313 tokens"):
            ckpt.embed(torch.from_numpy(ref["x_2p5s"]))
    with pytest.raises((ValueError, UsageError), match="313 tokens"):
        create_model("merl-tiny", contract=card("merl-resnet18-bench").contract)
    with pytest.raises(ValueError, match="ECGCLIP's projection"):
        enc.attention_map(x)
    # MERL's own contract for the encoder file (its linear-probe setting)
    own = load_model(fx / "res18_encoder_reduced.pth", contract="merl")
    assert own.contract == card("merl-resnet18").contract and own.config["projection_size"] is None


# --------------------------------------------------------------------------- (b) import, CLI, native reload


@pytest.mark.parametrize("name,importer", [("res18_ckpt_reduced.pth", "merl-ckpt-pth"),
                                           ("res18_encoder_reduced.pth", "merl-encoder-pth")])
def test_import_cli_and_native_reload_bit_for_bit(fx, ref, tmp_path, cli, name, importer):
    from ecgtool.models.checkpoint import sniff

    assert sniff(fx / name) == importer
    model = load_model(fx / name)
    assert model.extra["provenance"]["importer"] == importer
    out = tmp_path / "m.safetensors"
    res = cli(["models", "import", fx / name, "-o", out])
    assert res.exit_code == 0, res.stdout
    assert "tensors loaded" in res.stdout and "skipped" in res.stdout
    if importer == "merl-ckpt-pth":
        assert "138 tensors" not in res.stdout and "4 text-tower tensors skipped" in res.stdout
    native = load_checkpoint(out)
    assert native.config == model.config and native.contract == model.contract
    x = torch.from_numpy(ref["x"] if importer == "merl-ckpt-pth" else ref["x_2p5s_mv"])
    with torch.no_grad():
        assert torch.equal(native.embed(x), model.embed(x))
        assert torch.equal(native.features(x), model.features(x))
        if importer == "merl-ckpt-pth":
            assert torch.equal(native.attention_map(x), model.attention_map(x))


def _keys(fx, section: str) -> dict[str, tuple]:
    keys, on = {}, False
    for line in (fx / "keys.txt").read_text().splitlines():
        if line.startswith("## "):
            on = line.startswith(f"## [{section}]")
            continue
        if on and line.strip() and not line.startswith("#"):
            k, shape, _ = line.split("\t")
            keys[k] = tuple(ast.literal_eval(shape))
    return keys


def test_full_size_layouts_and_parameter_counts(fx):
    enc_keys, ckpt_keys = _keys(fx, "A"), _keys(fx, "B")
    assert len(enc_keys) == 122 and len(ckpt_keys) == 337

    def params(keys):
        return sum(int(np.prod(s)) for k, s in keys.items()
                   if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))

    assert params(enc_keys) == 3_853_962 == card("merl-resnet18-bench").released_file_parameters
    assert params(ckpt_keys) == 114_270_858 == card("merl-resnet18").released_file_parameters
    for variant, keys, prefix in (("merl-resnet18-bench", enc_keys, ""), ("merl-resnet18", ckpt_keys, "ecg_encoder.")):
        sd = {k: torch.empty(s, device="meta") for k, s in keys.items()}
        live, text, head = M._split(sd, keep_linear=False)
        live = {k.removeprefix(prefix): v for k, v in live.items()}
        assert set(head) == {f"{prefix}linear.weight", f"{prefix}linear.bias"}
        assert len(text) == (199 + 4 if prefix else 0)
        cfg = M.infer_config(live, variant)
        assert cfg == {"in_channels": 12, "widths": [64, 128, 256, 512], "blocks": [2, 2, 2, 2]}
        with torch.device("meta"):
            m = create_model(variant)
        M.match_state_dict(m.state_dict(), live, variant)  # every remaining tensor maps onto the module
        n = sum(p.numel() for p in m.parameters())
        assert n == card(variant).parameters
        assert n == (3_848_832 if not prefix else 3_848_832 + 131_328 + 409_600 + 131_072)
        with torch.no_grad():
            assert m.layer4_map(torch.empty(1, 12, m.contract.n_samples, device="meta")).shape == \
                (1, 512, 313 if prefix else 79)
    with torch.device("meta"):
        tiny = create_model("merl-tiny")
    assert sum(p.numel() for p in tiny.parameters()) == card("merl-tiny").parameters < 300_000
    assert card("merl-tiny").tiny and M.output_length(5000) == 313 and M.output_length(1250) == 79


def test_tiny_variant_is_the_fixture_layout_and_heads_read_the_layer4_mean(fx, ref):
    model = load_model(fx / "res18_ckpt_reduced.pth")
    tiny = create_model("merl-tiny")
    assert {k: v.shape for k, v in tiny.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert tiny.config == model.config
    # a classifier (MERL's finetuning: GAP -> linear) reads the 48-d time-mean of layer4, not the 28-d embedding
    clf, fresh = model.for_labels(["NORM", "MI"])
    assert fresh == ["linear.weight", "linear.bias"] and clf.linear.in_features == 48
    x = torch.from_numpy(ref["x"][:1])
    with torch.no_grad():
        assert clf.eval()(x).shape == (1, 2)
        assert _err(clf.head_input(x), ref["pooled"][:1]) <= 1e-6
    assert {id(p) for p in clf.freeze("linear")} == {id(p) for p in clf.linear.parameters()}
    assert sum(len(v) for v in clf.parameter_groups().values()) == len(list(clf.parameters()))


# --------------------------------------------------------------------------- (c) refusals


def _mutant(fx, tmp_path, name, change):
    sd = torch.load(fx / name, weights_only=True)
    change(sd)
    path = tmp_path / f"mutant_{name}"
    torch.save(sd, path)
    return path


def test_missing_misshaped_and_unexpected_tensors_refused(fx, tmp_path):
    def missing(sd):
        del sd["att_pool_head.cls_token"]

    with pytest.raises(CheckpointError, match=r"1 missing: att_pool_head\.cls_token"):
        load_model(_mutant(fx, tmp_path, "res18_ckpt_reduced.pth", missing))

    def misshaped(sd):
        sd["ecg_encoder.layer3.1.bn2.weight"] = torch.zeros(33)

    with pytest.raises(CheckpointError, match=r"layer3\.1\.bn2\.weight \(33,\) \(expected \(32,\)\)"):
        load_model(_mutant(fx, tmp_path, "res18_ckpt_reduced.pth", misshaped))

    def enc_missing(sd):
        del sd["layer2.0.shortcut.1.running_var"]

    with pytest.raises(CheckpointError, match=r"layer2\.0\.shortcut\.1\.running_var"):
        load_model(_mutant(fx, tmp_path, "res18_encoder_reduced.pth", enc_missing))

    # only the documented patterns are skipped: look-alikes are listed, not dropped
    def lookalikes(sd):
        sd["ecg_encoder.linear.scale"] = torch.zeros(3)
        sd["lm_modelx.weight"] = torch.zeros(3)

    with pytest.raises(CheckpointError) as e:
        load_model(_mutant(fx, tmp_path, "res18_ckpt_reduced.pth", lookalikes))
    assert "2 unexpected" in str(e.value) and "linear.scale" in str(e.value) and "lm_modelx.weight" in str(e.value)


def test_unknown_override_and_vit_refused(fx, tmp_path):
    with pytest.raises(CheckpointError, match="unknown override pooling"):
        load_model(fx / "res18_ckpt_reduced.pth", pooling="mean")
    with pytest.raises(CheckpointError, match="unknown override heads"):
        load_model(fx / "res18_encoder_reduced.pth", heads=4)
    with pytest.raises(CheckpointError, match="do not divide"):
        load_model(fx / "res18_ckpt_reduced.pth", heads=3)

    def vit(sd):
        sd["ecg_encoder.to_patch_embedding.weight"] = torch.zeros(4, 12, 50)

    with pytest.raises(CheckpointError, match="ViT"):
        load_model(_mutant(fx, tmp_path, "res18_ckpt_reduced.pth", vit))


class _Planted:
    """Unpickling this runs a shell command (creates a marker file)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_code_is_refused(fx, tmp_path):
    marker = tmp_path / "pwned"
    sd = torch.load(fx / "res18_encoder_reduced.pth", weights_only=True)
    sd["linear.bias"] = _Planted(str(marker))
    torch.save(sd, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"refused to unpickle: it would call (posix|os)\.system"):
        M.import_merl_encoder(tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"(posix|os)\.system"):
        load_model(tmp_path / "evil.pth")
    assert not marker.exists()


# --------------------------------------------------------------------------- (d) the presets on raw PTB-XL


def _records(data_dir, tmp_path, cli):
    heas = [data_dir / "ptbxl-500" / "records500" / "00000" / f"{i:05d}_hr.hea" for i in (1, 9, 17)]
    rec = tmp_path / "rec.parquet"
    assert cli(["convert", *heas, "-o", rec]).exit_code == 0
    return rec


def test_merl_preset_gives_the_contract_and_the_fixture_input(data_dir, fx, ref, tmp_path, cli):
    from ecgtool.io import batch_signal_array, open_table

    c = card("merl-resnet18").contract
    rec = _records(data_dir, tmp_path, cli)
    out = tmp_path / "x.parquet"
    res = cli(["preprocess", "--preset", c.preset, rec, "-o", out])
    assert res.exit_code == 0, res.stderr
    with open_table(out) as r:
        batch = next(iter(r))
        x = batch_signal_array(batch)
        assert r.meta.info["normalisation"] == c.normalisation and r.meta.info["n_samples"] == c.n_samples
    assert batch.column(batch.schema.get_field_index("leads")).to_pylist()[0] == list(c.leads) == MIMIC_ORDER
    assert set(batch.column(batch.schema.get_field_index("fs")).to_pylist()) == {c.fs}
    assert x.shape == (3, 12, c.n_samples) and x.dtype == np.float32
    assert float(np.abs(x - ref["x"]).max()) <= 1e-6  # MERL's ECGDataset output, aVL/aVF swapped by name
    assert x.min(axis=(1, 2)).max() == 0.0 and x.max(axis=(1, 2)).min() > 0.999999
    # end to end: ecgtool embed on the raw records applies the preset and pools with the attention pool
    ck = tmp_path / "ck.safetensors"
    assert cli(["models", "import", fx / "res18_ckpt_reduced.pth", "-o", ck]).exit_code == 0
    res = cli(["embed", "-m", ck, rec, "--precision", "fp32", "-o", tmp_path / "emb.npz"])
    assert res.exit_code == 0, res.stderr
    emb = np.load(tmp_path / "emb.npz", allow_pickle=True)["embedding"]
    assert emb.shape == (3, 28) and _err(emb, ref["proj_ecg_emb"]) <= 1e-5


def test_bench_preset_gives_the_benchmark_windows(data_dir, ref):
    import wfdb

    from ecgtool.errors import RecordErrors
    from ecgtool.io import batch_signal_array, records_batch
    from ecgtool.preprocess import Preprocessor, make_config

    c = card("merl-resnet18-bench").contract
    rows = []
    for i in (1, 9, 17):
        r = wfdb.rdrecord(str(data_dir / "ptbxl-500" / "records500" / "00000" / f"{i:05d}_hr"))
        rows.append({"record_id": f"{i}", "fs": float(r.fs), "leads": list(r.sig_name),
                     "signal": np.ascontiguousarray(r.p_signal.T, dtype=np.float32)})
    cfg = make_config(c.preset)
    assert cfg.normalisation == c.normalisation == "none" and cfg.segment_s * c.fs == c.n_samples
    out = Preprocessor(cfg, RecordErrors("fail")).process(records_batch(rows))
    x = batch_signal_array(out)
    assert x.shape == (12, 12, c.n_samples)  # 4 non-overlapping 2.5 s windows per record
    assert out.column(out.schema.get_field_index("leads")).to_pylist()[0] == list(c.leads) == STANDARD_12
    assert out.column(out.schema.get_field_index("segment")).to_pylist() == [0, 1, 2, 3] * 3
    assert float(np.abs(x[0::4] - ref["x_2p5s_mv"]).max()) <= 1e-6  # raw mV, canonical order, no swap
