"""ECG-FM transformer and the fairseq-signals importer, against fixtures written by the original code."""

from __future__ import annotations

import io
import os
import pickle
import re

import numpy as np
import pytest
import torch

from ecgtool.errors import CheckpointError
from ecgtool.models import create_model
from ecgtool.models.ecgfm import BASE_CONFIG, EcgFm, parse_conv_layers
from ecgtool.models.ecgfm import (expected_keys, fairseq_provenance, is_fairseq_checkpoint,
                                  load_fairseq_checkpoint)
from ecgtool.models.serial import FileInfo
from ecgtool.models.serial import safe_load as read_fairseq_checkpoint

ATOL = 1e-5


@pytest.fixture(scope="module")
def fx(reference_dir):
    return reference_dir / "fixtures" / "ecgfm"


@pytest.fixture(scope="module")
def ref(fx):
    with np.load(fx / "io.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def pretrained(fx):
    return load_fairseq_checkpoint(fx / "pretrained.pt")


@pytest.fixture(scope="module")
def finetuned(fx):
    return load_fairseq_checkpoint(fx / "finetuned.pt")


def maxerr(got: torch.Tensor, want: np.ndarray) -> float:
    got = got.detach().numpy()
    assert got.shape == want.shape
    return float(np.abs(got - want).max())


# --------------------------------------------------------------------------- numerics against the original


def test_pretrained_reproduces_reference(pretrained, ref):
    m = pretrained
    assert not m.training
    x = torch.from_numpy(ref["x"])
    with torch.no_grad():
        assert maxerr(m.conv_features(x), ref["conv_features"]) <= ATOL
        e = m.extract(x)
        assert maxerr(e["x"] + m.conv_pos(e["x"]), ref["encoder_input"]) <= ATOL
        feats = m.features(x)
        assert maxerr(feats, ref["features"]) <= ATOL
        assert maxerr(feats, ref["features_saliency_path"]) <= ATOL
        assert maxerr(m.pool(feats), ref["pooled"]) <= ATOL
        assert maxerr(m(x[:1]), ref["pooled"][:1]) <= ATOL  # no head: forward = embed
        attn = m.attention(x, layer=len(m.encoder.layers) - 1)
        assert maxerr(attn, ref["attn_last"]) <= ATOL
    # the attention is peaked, so a uniform map would not pass
    assert float(attn.max()) > 0.1
    torch.testing.assert_close(attn.sum(-1), torch.ones(attn.shape[:2]), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="no classifier head"):
        m.logits(x)


def test_finetuned_reproduces_reference(finetuned, ref):
    m = finetuned
    assert m.config["num_labels"] == 5 and m.quantizer is None and m.mask_emb is None
    x = torch.from_numpy(ref["x"])
    with torch.no_grad():
        feats = m.features(x)
        assert maxerr(feats, ref["ft_encoder_out"]) <= ATOL
        assert maxerr(m.pool(feats), ref["ft_pooled"]) <= ATOL
        assert maxerr(m.logits(x), ref["logits"]) <= ATOL
        assert maxerr(m(x[1:]), ref["ft_logits_saliency_path"][1:]) <= ATOL
        assert maxerr(m.attention(x, layer=-1), ref["ft_attn_last"]) <= ATOL
        # an intermediate layer is a different output, not the final one
        assert maxerr(m.features(x, layer=0), ref["ft_encoder_out"]) > 1e-2


def test_provenance(fx, pretrained, finetuned):
    import hashlib

    p = pretrained.extra["provenance"]
    assert p["fairseq_model"] == "wav2vec2_cmsc" and p["num_updates"] == 4
    assert p["sha256"] == hashlib.sha256((fx / "pretrained.pt").read_bytes()).hexdigest()
    assert p["source"] == "pretrained.pt" and p["importer"] == "fairseq-signals-pt"
    f = finetuned.extra["provenance"]
    assert f["fairseq_model"] == "ecg_transformer_classifier" and f["num_updates"] == 3
    assert f["sha256"] != p["sha256"]
    # the Gumbel temperature follows the checkpoint's updates
    assert pretrained.quantizer.curr_temp == pytest.approx(max(2.0 * 0.999995 ** 4, 0.5))
    state = read_fairseq_checkpoint(fx / "pretrained.pt")
    assert is_fairseq_checkpoint(state) and fairseq_provenance(state)["num_updates"] == 4
    assert FileInfo(fx / "pretrained.pt").kind == "torch" and FileInfo(fx / "io.npz").kind != "torch"


def test_load_model_dispatches_to_importer(fx, ref):
    from ecgtool.models.checkpoint import load_model

    m = load_model(fx / "finetuned.pt")
    with torch.no_grad():
        assert maxerr(m.logits(torch.from_numpy(ref["x"])), ref["logits"]) <= ATOL


# --------------------------------------------------------------------------- sizes and key names


def test_parameter_counts_full_size():
    def count(name, **kw):
        return create_model(name, device="meta", **kw).num_params()

    assert count("ecgfm-base") == 90_883_072
    assert count("ecgfm-base", pretraining=False) == 90_373_248
    assert count("ecgfm-base", num_labels=17) == 90_386_321  # 90,373,248 + proj 13,073
    assert count("ecgfm-large") == 311_940_352
    m = create_model("ecgfm-base", device="meta", pretraining=False)
    assert not any(k.startswith(("mask_emb", "quantizer", "project_q", "final_proj", "proj."))
                   for k in m.state_dict())


def _keys_txt(path):
    sections, cur = [], None
    for line in path.read_text().splitlines():
        if line.startswith(("# pretraining model", "# finetuned ")):
            cur = {}
            sections.append(cur)
        elif line and not line.startswith("#") and cur is not None:
            key, shape, _ = line.split("\t")
            cur[key] = tuple(int(v) for v in re.findall(r"\d+", shape))
    return sections


def test_full_size_key_list_matches_keys_txt(fx):
    pre, ft = _keys_txt(fx / "keys.txt")
    assert len(pre) == 215 and len(ft) == 209
    cfg = {k: v for k, v in BASE_CONFIG.items()}
    assert expected_keys(cfg, "pretraining") == pre
    assert expected_keys(cfg, "classifier", num_labels=17) == ft


def test_tiny_and_small_build_and_run():
    x = torch.randn(2, 12, 2500)
    for name in ("ecgfm-tiny", "ecgfm-small"):
        m = create_model(name, pretraining=False).eval()
        with torch.no_grad():
            f = m.features(x)
            assert f.shape == (2, m.output_length(2500), m.config["encoder_embed_dim"]) and f.shape[1] == 156
            assert m.pool(f).shape == (2, m.config["encoder_embed_dim"])
    clf = create_model("ecgfm-tiny", num_labels=3, label_names=["a", "b", "c"]).eval()
    assert clf.quantizer is None and clf.label_names == ["a", "b", "c"]
    with torch.no_grad():
        assert clf(x).shape == (2, 3)
    assert create_model("ecgfm-tiny").quantizer is not None  # registered default: the pretraining configuration
    both = create_model("ecgfm-tiny", pretraining=True, num_labels=2)
    assert both.quantizer is not None and both.proj.out_features == 2
    with pytest.raises(ValueError, match="label names"):
        create_model("ecgfm-tiny", num_labels=2, label_names=["a", "b", "c"])
    import json

    json.dumps(clf.config)
    assert clf.contract.fs == 500 and clf.contract.n_samples == 2500 and clf.contract.preset == "ecg-fm"


def test_padding_mask_pooling_and_attention():
    torch.manual_seed(0)
    m = create_model("ecgfm-tiny", pretraining=False).eval()
    x = torch.randn(2, 12, 2500)
    pad = torch.zeros(2, 2500, dtype=torch.bool)
    pad[1, 1600:] = True  # 1600 valid samples -> 100 valid frames
    fpm = m.frame_padding_mask(pad, 156)
    assert fpm[0].sum() == 0 and fpm[1].sum() == 56 and not fpm[1, :100].any()
    with torch.no_grad():
        feats = m.features(x, pad)
        pooled = m.pool(feats, pad)
        torch.testing.assert_close(pooled[1], feats[1, :100].mean(0), atol=1e-6, rtol=1e-5)
        attn = m.attention(x, padding_mask=pad)
        assert float(attn[1, :, 100:].abs().max()) == 0.0  # no attention to padded frames
        # the unpadded sample is unaffected by its neighbour's padding
        torch.testing.assert_close(feats[0], m.features(x[:1])[0], atol=1e-5, rtol=1e-5)


def test_forward_pretrain_pieces():
    torch.manual_seed(0)
    m = create_model("ecgfm-tiny").train()
    x = torch.randn(2, 12, 2500)
    mask = torch.zeros(2, 156, dtype=torch.bool)
    mask[0, 10:30] = True
    mask[1, 50:60] = True
    out = m.forward_pretrain(x, mask)
    fd = m.config["final_dim"]
    assert out["x"].shape == (30, fd) and out["y"].shape == (30, fd)
    assert out["mask_counts"].tolist() == [20, 10]
    assert out["encoder_out"].shape == (2, 156, 64)
    assert 1.0 <= out["prob_perplexity"].item() <= out["num_vars"] == 16
    loss = torch.nn.functional.cosine_similarity(out["x"], out["y"], dim=-1).sum() + out["prob_perplexity"] \
        + out["features_pen"]
    loss.backward()
    for p in (m.mask_emb, m.quantizer.vars, m.quantizer.weight_proj.weight, m.project_q.weight,
              m.final_proj.weight, m.feature_extractor.conv_layers[0][0].weight):
        assert p.grad is not None and float(p.grad.abs().sum()) > 0
    m.set_num_updates(10**7)
    assert m.quantizer.curr_temp == 0.5


def test_conv_layer_spec_is_parsed_not_evaluated():
    assert parse_conv_layers("[(256, 2, 2)] * 4") == [(256, 2, 2)] * 4
    assert parse_conv_layers("[(512, 10, 5)] + [(512, 3, 2)] * 2") == [(512, 10, 5), (512, 3, 2), (512, 3, 2)]
    for bad in ("__import__('os').system('true')", "[(256, 2, 2)] * 10**9", "[(256, 2)]", "[(0, 2, 2)]", "[]"):
        with pytest.raises(ValueError):
            parse_conv_layers(bad)


# --------------------------------------------------------------------------- bad checkpoints


@pytest.fixture
def pre_state(fx):
    return read_fairseq_checkpoint(fx / "pretrained.pt")


def _save(obj, path):
    torch.save(obj, path)
    return path


def test_parametrizations_style_keys_load(pre_state, tmp_path, ref):
    sd = pre_state["model"]
    for old, new in (("weight_g", "original0"), ("weight_v", "original1")):
        sd[f"conv_pos.pos_conv.0.parametrizations.weight.{new}"] = sd.pop(f"conv_pos.pos_conv.0.{old}")
    m = load_fairseq_checkpoint(_save(pre_state, tmp_path / "new_style.pt"))
    with torch.no_grad():
        assert maxerr(m.features(torch.from_numpy(ref["x"])), ref["features"]) <= ATOL


def test_weight_g_is_applied(pre_state, tmp_path, ref):
    # g != ||v|| in the fixture: replacing g by ||v|| (ignoring g) must change the output
    sd = pre_state["model"]
    v = sd["conv_pos.pos_conv.0.weight_v"]
    sd["conv_pos.pos_conv.0.weight_g"] = v.norm(dim=(0, 1), keepdim=True)
    m = load_fairseq_checkpoint(_save(pre_state, tmp_path / "g.pt"))
    with torch.no_grad():
        assert maxerr(m.features(torch.from_numpy(ref["x"])), ref["features"]) > 1e-2


def test_missing_extra_and_misshaped_keys_all_listed(pre_state, tmp_path):
    sd = pre_state["model"]
    del sd["encoder.layers.1.fc2.bias"]
    sd["encoder.layers.7.fc1.weight"] = torch.zeros(3, 3)
    sd["project_q.weight"] = torch.zeros(48, 47)
    with pytest.raises(CheckpointError) as e:
        load_fairseq_checkpoint(_save(pre_state, tmp_path / "bad.pt"))
    msg = str(e.value)
    assert "1 missing: encoder.layers.1.fc2.bias" in msg
    assert "1 unexpected: encoder.layers.7.fc1.weight" in msg
    assert "1 mis-shaped: project_q.weight [48, 47] (config wants [48, 48])" in msg
    assert "bad.pt" in msg


def test_shapes_that_do_not_match_cfg(pre_state, tmp_path):
    pre_state["cfg"]["model"]["encoder_embed_dim"] = 128
    pre_state["cfg"]["model"]["encoder_layers"] = 3
    with pytest.raises(CheckpointError, match=r"missing: encoder\.layers\.2\..*mis-shaped: .*post_extract_proj"):
        load_fairseq_checkpoint(_save(pre_state, tmp_path / "cfg.pt"))


def test_finetuned_missing_head_refused(fx, tmp_path):
    state = read_fairseq_checkpoint(fx / "finetuned.pt")
    assert isinstance(state["extra_state"]["metrics"], dict)  # numpy arrays came through the allowlist
    del state["model"]["proj.bias"]
    with pytest.raises(CheckpointError, match=r"1 missing: proj\.bias"):
        load_fairseq_checkpoint(_save(state, tmp_path / "ft.pt"))


def test_truncated_random_and_foreign_files(fx, tmp_path):
    data = (fx / "pretrained.pt").read_bytes()
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_fairseq_checkpoint(trunc)
    rnd = tmp_path / "random.pt"
    rnd.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError, match="random.pt"):
        load_fairseq_checkpoint(rnd)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_fairseq_checkpoint(empty)
    foreign = _save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a fairseq-signals checkpoint"):
        load_fairseq_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="no such file"):
        load_fairseq_checkpoint(tmp_path / "absent.pt")


class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_pickle_that_runs_code_is_refused_and_not_run(pre_state, tmp_path):
    marker = tmp_path / "pwned"
    pre_state["extra_state"]["evil"] = _Payload(str(marker))
    path = _save(pre_state, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused"):
        load_fairseq_checkpoint(path)
    assert not marker.exists()
    # the payload is live: unrestricted unpickling would have run it
    torch.load(path, weights_only=False)
    assert marker.is_dir()
    # and a bare pickle (not a torch zip) is refused as well
    marker.rmdir()
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"cfg": _Payload(str(marker))}, protocol=2))
    with pytest.raises(CheckpointError):
        load_fairseq_checkpoint(raw)
    assert not marker.exists()


def test_label_names_attached_on_import(fx):
    names = ["AF", "SR", "PVC", "TACHY", "BRADY"]
    m = load_fairseq_checkpoint(fx / "finetuned.pt", label_names=names)
    assert m.label_names == names
    with pytest.raises(CheckpointError, match="5 outputs"):
        load_fairseq_checkpoint(fx / "finetuned.pt", label_names=names[:3])


def test_imported_pretraining_checkpoint_carries_its_update_count(reference_dir):
    """Continuing pretraining from a fairseq checkpoint resumes its Gumbel temperature schedule."""
    from ecgtool.models.checkpoint import load_model

    m = load_model(reference_dir / "fixtures" / "ecgfm" / "pretrained.pt")
    assert m.extra["training"] == {"updates": 4}  # optimizer_history[-1].num_updates of the fixture
