"""ST-MEM (ST_MEM_ViT) and its importer against fixtures made by the original code (vuno/ST-MEM)."""

from __future__ import annotations

import ast
import os
import pickle

import numpy as np
import pytest
import torch

from ecgtool.errors import CheckpointError, UsageError
from ecgtool.models.checkpoint import load_model
from ecgtool.models.registry import create_model
from ecgtool.models.serial import FileInfo
from ecgtool.models.stmem import StMem, _sniff, import_stmem, read_layout

TOL = 1e-5
LEADS = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
FILES = {"encoder": "st_mem_reduced_encoder.pth", "full": "st_mem_reduced_full.pth",
         "finetuned": "st_mem_reduced_finetuned.pth"}
# io.npz: the input, the original's input pipeline, its provenance, and the original's outputs
INPUTS = {"x", "x_resampled_250hz", "ecg_ids", "crop_index", "crop_start"}
OUTPUTS = {"patch_embed", "tokens_in", "block0_out", "features", "pooled", "tokens_normed", "logits", "ft_pooled",
           "pooled_short", "logits_short"}


@pytest.fixture(scope="module")
def fx(reference_dir):
    return reference_dir / "fixtures" / "stmem"


@pytest.fixture(scope="module")
def io(fx):
    return dict(np.load(fx / "io.npz"))


def _err(a, b: np.ndarray) -> float:
    a = a.detach().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    assert tuple(a.shape) == b.shape, (a.shape, b.shape)
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def _original_crops(resampled: np.ndarray, starts) -> np.ndarray:
    """ST-MEM's eval transforms from the resampled record (NCrop, HP 0.67 then LP 40, order 5, joint z-score)."""
    from scipy import signal

    hp = signal.butter(5, 0.67, "highpass", fs=250, output="sos")
    lp = signal.butter(5, 40.0, "lowpass", fs=250, output="sos")
    out = []
    for rec, s in zip(resampled, starts):
        y = signal.sosfiltfilt(lp, signal.sosfiltfilt(hp, rec[:, s:s + 2250].astype(np.float64), axis=-1), axis=-1)
        out.append(((y - y.mean()) / y.std()).astype(np.float32))
    return np.stack(out)


def test_fixture_outputs_reproduce(fx, io):
    assert set(io) == INPUTS | OUTPUTS  # every array in io.npz is checked below
    checked: dict[str, float] = {}
    assert io["ecg_ids"].tolist() == [1, 9, 17] and io["crop_start"].tolist() == [0, 125, 250]
    assert io["crop_index"].tolist() == [0, 1, 2]
    checked["x"] = _err(_original_crops(io["x_resampled_250hz"], io["crop_start"]), io["x"])
    x = torch.from_numpy(io["x"])
    models = {k: import_stmem(fx / f)[0] for k, f in FILES.items()}
    with torch.no_grad():
        enc = models["encoder"]
        inter = enc.forward_intermediates(x)
        checked["patch_embed"] = _err(inter["patch_embed"], io["patch_embed"])
        checked["tokens_in"] = _err(inter["tokens_in"], io["tokens_in"])
        checked["block0_out"] = _err(inter["blocks"][0], io["block0_out"])
        checked["features"] = _err(inter["features"], io["features"])
        checked["pooled"] = _err(enc.embed(x), io["pooled"])
        checked["pooled_short"] = _err(enc.embed(x[:, :, :600]), io["pooled_short"])  # right SEP: last pos row
        # the interface: features (B, n*C, W) time-major, pooled = LN(mean); no head -> forward is the embedding
        feats = enc.features(x)
        assert torch.equal(feats, inter["features"].transpose(1, 2).reshape(3, 360, 24))
        assert torch.equal(enc.pool(feats), inter["pooled"]) and torch.equal(enc(x), enc.embed(x))
        full = models["full"]
        checked["tokens_normed"] = _err(full.pretraining_tokens(x), io["tokens_normed"])
        assert torch.equal(full.embed(x), enc.embed(x))  # the full file's encoder is the encoder file's
        ft = models["finetuned"]
        checked["logits"] = _err(ft(x), io["logits"])
        checked["ft_pooled"] = _err(ft.embed(x), io["ft_pooled"])
        checked["logits_short"] = _err(ft.logits(x[:, :, :600]), io["logits_short"])
    assert set(checked) | {"x_resampled_250hz", "ecg_ids", "crop_index", "crop_start"} == set(io)
    bad = {k: v for k, v in checked.items() if not v <= TOL}
    assert not bad, bad


def test_config_read_from_the_files(fx):
    for layout, name in FILES.items():
        model, lines = import_stmem(fx / name)
        c = model.config
        assert (c["width"], c["depth"], c["heads"], c["dim_head"], c["mlp_dim"]) == (24, 2, 3, 64, 96)
        assert (c["num_leads"], c["seq_len"], c["patch_size"], c["qkv_bias"]) == (12, 2250, 75, True)
        assert c["num_classes"] == (5 if layout == "finetuned" else None)
        assert model.extra["provenance"]["layout"] == layout and model.contract.preset == "st-mem"
        assert f"ST-MEM {layout} checkpoint" in lines[0]
    assert any("decoder checked and left out: 32 tensors" in ln for ln in import_stmem(fx / FILES["full"])[1])


@pytest.mark.parametrize("layout", list(FILES))
def test_load_model_cli_import_and_native_reload(fx, io, cli, tmp_path, layout):
    x = torch.from_numpy(io["x"][:2])
    model = load_model(fx / FILES[layout])
    assert isinstance(model, StMem) and model.extra["provenance"]["importer"] == "stmem-pth"
    out = tmp_path / f"{layout}.safetensors"
    res = cli(["models", "import", fx / FILES[layout], "-o", out])
    assert res.exit_code == 0, res.stderr
    assert out.exists() and "non-commercial" in (res.stdout + res.stderr)
    back = load_model(out)
    assert isinstance(back, StMem) and back.config == model.config and back.contract == model.contract
    with torch.no_grad():
        assert torch.equal(back(x), model(x)) and torch.equal(back.features(x), model.features(x))
    assert back.extra["provenance"]["source"] == FILES[layout]


def test_heads_come_from_config_preset_or_head_size(fx, io, tmp_path):
    x = torch.from_numpy(io["x"][:1])
    ref = io["pooled"][:1]
    ckpt = torch.load(fx / FILES["encoder"], weights_only=True)
    # no heads in the config: ST-MEM's fixed head size 64 gives 192 / 64 = 3 heads
    ckpt["config"]["model"] = {"seq_len": 2250, "patch_size": 75, "num_leads": 12, "norm_pix_loss": True}
    torch.save(ckpt, tmp_path / "nohead.pth")
    model, lines = import_stmem(tmp_path / "nohead.pth")
    assert model.config["heads"] == 3 and "fixed head size 64" in lines[2]
    assert _err(model.embed(x).detach(), ref) <= TOL
    # the released file's config names the base preset (12 heads), which the reduced shapes contradict
    ckpt["config"]["model_name"] = "st_mem_vit_base_dec256d4b"
    torch.save(ckpt, tmp_path / "preset.pth")
    with pytest.raises(CheckpointError, match="heads 12 .* attention width 192"):
        import_stmem(tmp_path / "preset.pth")
    model, _ = import_stmem(tmp_path / "preset.pth", heads=3)
    assert _err(model.embed(x).detach(), ref) <= TOL
    with pytest.raises(UsageError, match="width"):
        import_stmem(fx / FILES["encoder"], width=32)


def _mutated(fx, tmp_path, name, change):
    ckpt = torch.load(fx / FILES[name], weights_only=True)
    change(ckpt["model"])
    path = tmp_path / f"mutant_{name}.pth"
    torch.save(ckpt, path)
    return path


def test_missing_and_misshaped_tensors_named(fx, tmp_path):
    def missing(sd):
        del sd["block1.ff.fn.net.3.bias"]

    with pytest.raises(CheckpointError, match=r"1 missing: block1\.ff\.fn\.net\.3\.bias"):
        load_model(_mutated(fx, tmp_path, "encoder", missing))

    def misshaped(sd):
        sd["head.bias"] = torch.zeros(7)

    with pytest.raises(CheckpointError, match=r"head\.bias \(7,\) \(expected \(5,\)\)"):
        import_stmem(_mutated(fx, tmp_path, "finetuned", misshaped))

    def extra(sd):
        sd["block0.attn.fn.gate"] = torch.zeros(3)

    with pytest.raises(CheckpointError, match=r"1 unexpected: block0\.attn\.fn\.gate"):
        import_stmem(_mutated(fx, tmp_path, "encoder", extra))

    def decoder(sd):
        del sd["decoder_blocks.1.ff.fn.net.0.weight"]
        sd["decoder_head.bias"] = torch.zeros(74)

    with pytest.raises(CheckpointError) as e:
        import_stmem(_mutated(fx, tmp_path, "full", decoder))
    assert "decoder_blocks.1.ff.fn.net.0.weight" in str(e.value) and "decoder_head.bias (74,)" in str(e.value)

    def alias(sd):
        sd["to_patch_embedding.2.bias"] = sd["to_patch_embedding.2.bias"] + 1

    with pytest.raises(CheckpointError, match=r"to_patch_embedding\.2\.bias differs"):
        import_stmem(_mutated(fx, tmp_path, "full", alias))

    def lead(sd):
        del sd["lead_embeddings.4"]

    with pytest.raises(CheckpointError, match="lead_embeddings indices"):
        import_stmem(_mutated(fx, tmp_path, "encoder", lead))


class _System:
    """Unpickling this would run a shell command."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_code_is_refused(fx, tmp_path):
    marker = tmp_path / "pwned"
    ckpt = torch.load(fx / FILES["encoder"], weights_only=True)
    ckpt["config"]["seed"] = _System(str(marker))
    torch.save(ckpt, tmp_path / "evil.pth")
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"model": _System(str(marker))}, f)
    with pytest.raises(CheckpointError, match=r"refused to unpickle: it would call (posix|os)\.system"):
        import_stmem(tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="system"):
        load_model(tmp_path / "evil.pth")
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "evil.pkl")
    assert not marker.exists()


def test_sniff_is_specific(fx, reference_dir):
    for name in FILES.values():
        assert _sniff(FileInfo(fx / name))
    others = [p for p in (reference_dir / "fixtures").rglob("*") if p.suffix in (".pth", ".pt", ".ckpt")
              and p.parent.name != "stmem"]
    assert others
    for p in others:
        assert not _sniff(FileInfo(p)), p


def _keys(fx) -> dict[str, dict[str, tuple]]:
    out: dict[str, dict[str, tuple]] = {}
    for line in (fx / "keys.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        section, key, shape = line.split("\t")[:3]
        out.setdefault(section, {})[key] = tuple(ast.literal_eval(shape))
    return out


def test_full_size_keys_and_parameter_counts(fx):
    keys = _keys(fx)
    with torch.device("meta"):
        base = create_model("stmem-base")
        small = create_model("stmem-small")
    assert sum(p.numel() for p in base.parameters()) == 85_150_614 == base.card.parameters
    assert sum(p.numel() for p in small.parameters()) == 21_341_718
    assert {k: tuple(v.shape) for k, v in base.state_dict().items()} == keys["encoder"]
    assert len(keys["encoder"]) == 166 and len(keys["full"]) == 228
    # the released layouts, as meta tensors, pass the importer's checks (heads from the released model_name)
    meta = {name: {k: torch.empty(s, device="meta") for k, s in keys[name].items()} for name in ("encoder", "full")}
    released_cfg = {"model_name": "st_mem_vit_base_dec256d4b",
                    "model": {"seq_len": 2250, "patch_size": 75, "num_leads": 12, "norm_pix_loss": True}}
    for name in ("encoder", "full"):
        r = read_layout(meta[name], released_cfg, {}, f"keys.txt [{name}]")
        assert r["config"] == base.config and r["heads_from"] == "the preset st_mem_vit_base_dec256d4b"
    r = read_layout(meta["full"], released_cfg, {}, "keys.txt [full]")
    assert r["decoder_parameters"] == 88_534_753 - 85_150_614 and r["aliases"] == 6
    head = {**meta["encoder"], "head.weight": torch.empty(5, 768, device="meta"),
            "head.bias": torch.empty(5, device="meta")}
    assert read_layout(head, released_cfg, {}, "head")["config"]["num_classes"] == 5
    with torch.no_grad():
        out = base(torch.empty(1, 12, 2250, device="meta"))
    assert tuple(out.shape) == (1, 768)


def test_input_lengths_padding_and_attention(fx, io):
    model = import_stmem(fx / FILES["finetuned"])[0]
    x = torch.from_numpy(io["x"][:2])
    with torch.no_grad():
        longer = torch.cat([x, x[:, :, :75]], dim=-1)  # 31 patches: runs, as the original (row 31 shared)
        assert model.features(longer).shape == (2, 12 * 31, 24)
        for bad in (2400, 2300):
            with pytest.raises(ValueError, match="samples"):
                model.features(x.new_zeros(2, 12, bad))
        with pytest.raises(ValueError, match="12 leads"):
            model.features(x[:, :6])
        # a sample mask leaves the padded patches out of the mean (attention is not masked)
        feats = model.features(x)
        mask = torch.zeros(2, 2250, dtype=torch.bool)
        mask[1, 1500:] = True  # patches 20..29 of every lead
        pooled = model.pool(feats, mask)
        keep = torch.arange(360) // 12 < 20  # time-major: token j * 12 + c
        assert torch.equal(pooled[0], model.pool(feats[:1])[0])
        assert torch.allclose(pooled[1], model.norm(feats[1, keep].mean(0)), atol=1e-6)
        attn = model.attention(x, layer=-1)
        assert attn.shape == (2, 360, 360) and (attn >= 0).all() and (attn.sum(-1) <= 1 + 1e-5).all()
        # the same weights as the network's own (lead-major, SEP included) map, reordered
        tokens, n = model.tokens_in(x)
        _, full = model.block1(model.block0(tokens), return_attention=True)
        full = full.mean(1).reshape(2, 12, 32, 12, 32)[:, :, 1:-1][:, :, :, :, 1:-1]
        assert torch.equal(attn, full.permute(0, 2, 1, 4, 3).reshape(2, 360, 360))
        assert model.attention(x, layer=0).shape == (2, 360, 360)
        assert model.features(x, layer=0).shape == feats.shape


def test_tiny_variant_and_new_head():
    torch.manual_seed(0)
    model = create_model("stmem-tiny").eval()
    assert sum(p.numel() for p in model.parameters()) == model.card.parameters < 300_000
    assert model.contract.fs == 250 and list(model.contract.leads) == LEADS and model.contract.n_samples == 2250
    new, fresh = model.for_labels(["a", "b", "c"])
    assert fresh == ["head.weight", "head.bias"] and new.n_classes == 3
    x = torch.randn(2, 12, 2250)
    with torch.no_grad():
        assert new(x).shape == (2, 3) and torch.equal(new.embed(x), model.embed(x))
    assert len(new.freeze("linear")) == 2


def test_preset_gives_the_contract(cli, data_dir, fx, io, tmp_path):
    """The card's preset on a raw PTB-XL record (ecgtool convert) gives the contract's input: 250 Hz, 12 leads
    in order, 2250 samples, one z-score over all leads; the window is the original's middle crop (start 125),
    filtered over the whole record before cropping (the documented departure)."""
    from ecgtool.errors import RecordErrors
    from ecgtool.io import batch_signal_array, open_table
    from ecgtool.preprocess import Preprocessor, make_config

    contract = create_model("stmem-tiny").contract
    src = data_dir / "ptbxl-500" / "records500" / "00000" / "00009_hr.hea"
    rec = tmp_path / "rec.parquet"
    assert cli(["convert", src, "-o", rec]).exit_code == 0
    pre = Preprocessor(make_config(contract.preset), RecordErrors("fail"))
    with open_table(rec) as r:
        (out,) = [b for b in (pre.process(batch) for batch in r) if b is not None]
    x = batch_signal_array(out)
    assert x.shape == (1, len(contract.leads), contract.n_samples) and x.dtype == np.float32
    assert pre.fs == contract.fs == 250 and pre.leads == list(contract.leads) == LEADS
    assert contract.normalisation == "record-zscore"
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std()) - 1) < 1e-5
    from scipy import signal

    r500 = io["x_resampled_250hz"][1].astype(np.float64)  # ecg_id 9, FFT-resampled by the original
    y = signal.sosfiltfilt(signal.butter(5, 40.0, "lowpass", fs=250, output="sos"),
                           signal.sosfiltfilt(signal.butter(5, 0.67, "highpass", fs=250, output="sos"), r500))
    y = y[:, 125:2375]
    assert np.abs(x[0] - (y - y.mean()) / y.std()).max() < 1e-4
