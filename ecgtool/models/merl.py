"""MERL (Liu et al., ICML 2024): the ResNet18-1D ECG tower of ECGCLIP, and the importers of its released files.

The arithmetic follows ../shared/reference/merl.md:

* **ResNet-1D** (MERL ``utils/resnet1d.py``): a stem Conv1d(k7, stride 2,
  pad 3, no bias) -> BN -> ReLU with *no* max-pool, then four stages of
  BasicBlocks (two k3 convs without bias, each followed by BN; the shortcut is
  the identity, or a 1x1 conv + BN where the block changes stride or width;
  ReLU after the add). Lengths go n -> ceil(n/2) per stride-2 conv, so 5000
  samples give 313 steps and a 2.5 s window of 1250 samples 79.
* **ECGCLIP's ECG heads** (MERL ``utils/utils_builder.py``): ``downconv``, a
  1x1 Conv1d(512 -> P) with bias on the layer4 map, then ``att_pool_head``: a
  CLS token (plus position 0, which the original then adds a second time
  with all the other positions) queries the 313 tokens through a 4-head
  ``nn.MultiheadAttention``, then ``c_proj``. That (B, P) vector is
  ``ext_ecg_emb``, the zero-shot ECG embedding. ``linear1`` / ``linear2``
  (no bias) on the time-mean of the downconv map are the uni-modal-alignment
  heads of pretraining (``ecg_emb1/2``).

What ``embed()`` returns (merl.md section 5, "Embeddings as the original
computes them"):

* a model **with** the ECGCLIP heads (``projection_size`` set: the
  ``merl-resnet18`` variant, the ``*_ckpt.pth`` file) pools as ECGCLIP does:
  ``embed()`` is ``ext_ecg_emb``, the attention-pooled P-d (256) vector, *not*
  normalised; :meth:`MerlResNet.zeroshot_embedding` L2-normalises it as
  ``get_ecg_emd`` does. Its per-token :meth:`features` are the downconv tokens
  (B, 313, P) that the attention pool reads (the last "layer"); the layer4 map
  is ``features(x, layer=3)``. The attention pool needs exactly
  ``spacial_dim`` (313) tokens, i.e. a 10 s, 5000-sample input.
* a model **without** them (``merl-resnet18-bench``, the ``*_encoder.pth``
  file) pools as MERL's linear probe and the ICLR-2026 benchmark do:
  ``embed()`` is the time-mean of the layer4 map (512-d, not normalised), and
  :meth:`features` is that map, time-major.

Either way a classifier head (``linear``, as in MERL's fine-tuning copy of the
ResNet) reads the 512-d time-mean of layer4 (:meth:`MerlResNet.pooled_features`).

The released files are bare state dicts (no config inside), read through
:func:`ecgtool.models.serial.safe_load`; the architecture comes from tensor
shapes, except the attention heads (4), a constant of the original code
(config field ``heads``, override ``heads=``). Tensors of parts ecgtool does
not build are skipped by the explicit patterns :data:`TEXT_TOWER_KEY` and
:data:`UNUSED_HEAD_KEY`; every other tensor must load.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ecgtool.errors import CheckpointError
from ecgtool.models.base import EcgModel
from ecgtool.models.card import card
from ecgtool.models.contract import InputContract
from ecgtool.models.registry import register_family, register_importer, register_model
from ecgtool.models.serial import match_state_dict, provenance, safe_load

FAMILY = "merl"

# ResNet18 with ECGCLIP's heads (network.projection_head.projection_size = 256 in MERL's pretrain/config.yaml)
RELEASED_CONFIG: dict[str, Any] = {
    "in_channels": 12,
    "widths": [64, 128, 256, 512],   # stem = layer1, layer2, layer3, layer4
    "blocks": [2, 2, 2, 2],          # BasicBlocks per stage (ResNet18)
    "projection_size": 256,          # P of downconv / att_pool_head; None: encoder only (mean pooling)
    "spacial_dim": 313,              # tokens the attention pool takes (its positional embedding has 314 rows)
    "heads": 4,                      # attention-pool heads: a constant of MERL's code, not stored in the files
    "uma_heads": True,               # linear1 / linear2 (pretraining's uni-modal alignment heads)
    "n_classes": None,               # the `linear` head over the 512-d time-mean of layer4
}
BENCH_CONFIG: dict[str, Any] = {**RELEASED_CONFIG, "projection_size": None, "uma_heads": False}
TINY_CONFIG: dict[str, Any] = {**RELEASED_CONFIG, "widths": [16, 24, 32, 48], "projection_size": 28}

STEM_KERNEL, STEM_STRIDE, STEM_PAD = 7, 2, 3
STAGE_STRIDES = (1, 2, 2, 2)

CONTRACT_MERL = card("merl-resnet18").contract
CONTRACT_BENCH = card("merl-resnet18-bench").contract
CONTRACTS = {"merl": CONTRACT_MERL, "bench": CONTRACT_BENCH}


def normalise_config(config: dict[str, Any]) -> dict[str, Any]:
    """A complete, JSON-serialisable config (defaults from the released one), checked."""
    unknown = set(config) - set(RELEASED_CONFIG)
    if unknown:
        raise ValueError(f"unknown MERL config keys: {', '.join(sorted(unknown))}")
    cfg = {**RELEASED_CONFIG, **config}
    cfg["widths"] = [int(v) for v in cfg["widths"]]
    cfg["blocks"] = [int(v) for v in cfg["blocks"]]
    for key in ("in_channels", "spacial_dim", "heads"):
        cfg[key] = int(cfg[key])
    cfg["projection_size"] = None if cfg["projection_size"] in (None, 0) else int(cfg["projection_size"])
    cfg["n_classes"] = None if cfg["n_classes"] in (None, 0) else int(cfg["n_classes"])
    cfg["uma_heads"] = bool(cfg["uma_heads"]) and cfg["projection_size"] is not None
    if len(cfg["widths"]) != 4 or len(cfg["blocks"]) != 4 or min(cfg["blocks"]) < 1:
        raise ValueError(f"MERL's ResNet has 4 stages: widths {cfg['widths']}, blocks {cfg['blocks']}")
    p = cfg["projection_size"]
    if p is not None:
        if cfg["heads"] < 1 or p % cfg["heads"]:
            raise ValueError(f"{cfg['heads']} attention heads do not divide projection_size {p}")
        if p == cfg["widths"][-1]:
            # features(layer=3) (the layer4 map) and features() (the downconv tokens) would have the same
            # shape, so pool() could not tell which one it is given
            raise ValueError(f"projection_size {p} equals the layer4 width; not supported")
    return cfg


def output_length(n_samples: int) -> int:
    """Steps of the layer4 map for an input of ``n_samples`` (each stride-2 conv: n -> ceil(n/2))."""
    n = math.floor((n_samples + 2 * STEM_PAD - STEM_KERNEL) / STEM_STRIDE) + 1
    for s in STAGE_STRIDES:
        n = (n - 1) // s + 1
    return n


class BasicBlock(nn.Module):
    """conv3 -> BN -> ReLU -> conv3 -> BN, plus the shortcut, then ReLU (key names as MERL's)."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv1d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm1d(planes)
        self.conv2 = nn.Conv1d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm1d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv1d(in_planes, planes, 1, stride=stride, bias=False),
                                          nn.BatchNorm1d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class AttentionPool(nn.Module):
    """ECGCLIP's ``AttentionPool2d`` (1-D): a CLS query over CLS + ``spacial_dim`` tokens.

    The CLS token is ``cls_token + positional_embedding[0]``, and then the
    positional embedding is added to all positions, so the CLS position carries
    position 0 twice, as in the original.
    """

    def __init__(self, spacial_dim: int, dim: int, heads: int):
        super().__init__()
        self.spacial_dim = spacial_dim
        self.positional_embedding = nn.Parameter(torch.randn(1, spacial_dim + 1, dim) / dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.mhsa = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.c_proj = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, T, P) -> (embedding (B, P), head-averaged CLS attention on the T tokens (B, 1, T))."""
        if tokens.shape[1] != self.spacial_dim:
            raise ValueError(
                f"MERL's attention pool takes exactly {self.spacial_dim} tokens (a 10 s, 5000-sample input at "
                f"500 Hz); got {tokens.shape[1]}. Shorter windows (e.g. the benchmark's 2.5 s) only have the "
                "mean-pooled encoder: use merl-resnet18-bench")
        cls = (self.cls_token + self.positional_embedding[:, :1, :]).expand(tokens.shape[0], -1, -1)
        x = torch.cat((cls, tokens), dim=1) + self.positional_embedding.to(tokens.dtype)
        out, weights = self.mhsa(x[:, :1, :], x, x, need_weights=True, average_attn_weights=True)
        return self.c_proj(out).reshape(tokens.shape[0], -1), weights[:, :, 1:]


@register_family
class MerlResNet(EcgModel):
    """MERL's ResNet-1D ECG encoder, with or without ECGCLIP's projection / attention-pool heads."""

    family = FAMILY
    head_name = "linear"

    def __init__(self, config: dict[str, Any] | None = None, contract: InputContract | None = None,
                 label_names: list[str] | None = None):
        cfg = normalise_config(config or {})
        contract = contract or (CONTRACT_MERL if cfg["projection_size"] else CONTRACT_BENCH)
        self.check_io(contract, cfg["in_channels"], label_names, cfg["n_classes"])
        if cfg["projection_size"] and output_length(contract.n_samples) != cfg["spacial_dim"]:
            raise ValueError(
                f"the attention pool takes {cfg['spacial_dim']} tokens, but the contract's {contract.n_samples} "
                f"samples give {output_length(contract.n_samples)}: MERL's own contract is 5000 samples (10 s "
                "at 500 Hz); the benchmark's 2.5 s windows need the encoder without the heads (merl-resnet18-bench)")
        super().__init__(cfg, contract, label_names)

        w = cfg["widths"]
        self.conv1 = nn.Conv1d(cfg["in_channels"], w[0], STEM_KERNEL, stride=STEM_STRIDE, padding=STEM_PAD,
                               bias=False)
        self.bn1 = nn.BatchNorm1d(w[0])
        in_planes = w[0]
        for s, (planes, n, stride) in enumerate(zip(w, cfg["blocks"], STAGE_STRIDES)):
            blocks = []
            for b in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if b == 0 else 1))
                in_planes = planes
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
        p = cfg["projection_size"]
        if p:
            self.downconv = nn.Conv1d(w[-1], p, kernel_size=1)
            self.att_pool_head = AttentionPool(cfg["spacial_dim"], p, cfg["heads"])
            if cfg["uma_heads"]:
                self.linear1 = nn.Linear(p, p, bias=False)
                self.linear2 = nn.Linear(p, p, bias=False)
        self.linear = self.make_classifier(cfg["n_classes"]) if cfg["n_classes"] else None

    # -- the model interface ---------------------------------------------------

    @property
    def attention_pooled(self) -> bool:
        return self.config["projection_size"] is not None

    def stages(self) -> list[nn.Module]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def layer_modules(self) -> list[nn.Module]:
        """layer1..layer4, then (with ECGCLIP's heads) downconv, whose tokens the attention pool reads."""
        return self.stages() + ([self.downconv] if self.attention_pooled else [])

    def input_modules(self) -> list[nn.Module]:
        return [self.conv1, self.bn1]

    def classifier_config(self, n_labels: int | None) -> dict[str, Any]:
        return {**self.config, "n_classes": n_labels}

    def make_classifier(self, n_labels: int) -> nn.Module:
        return nn.Linear(self.config["widths"][-1], n_labels)

    @property
    def embed_dim(self) -> int:
        return self.feature_dim()

    def feature_dim(self, layer: int | None = None) -> int:
        i = self.layer_index(layer)
        if i is None:
            i = self.num_layers - 1
        return int(self.config["projection_size"]) if i == 4 else int(self.config["widths"][i])

    def features(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None,
                 layer: int | None = None) -> torch.Tensor:
        """(B, T', D) time-major: the downconv tokens (with ECGCLIP's heads) or the layer4 map (encoder only);
        ``layer`` 0..3 = output of layer1..layer4, 4 = downconv.

        ``padding_mask`` is accepted and not used: the network has no notion of
        padding (MERL zero-pads short records and min-max scales the padding too)."""
        i = self.layer_index(layer)
        if i is None:
            i = self.num_layers - 1
        out = self.stem(x)
        for stage in self.stages()[: min(i, 3) + 1]:
            out = stage(out)
        if i == 4:
            out = self.downconv(out)
        return out.transpose(1, 2)

    def pool(self, feats: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """As the original pools: the attention pool over the downconv tokens (ECGCLIP's ``ext_ecg_emb``),
        else the time-mean (MERL's linear probe, the benchmark's ``pooled_features``).

        The attention pool attends to every token, padding included, as the
        original does. Features of a lower layer (``features(x, layer=k)``) are
        mean-pooled."""
        if self.attention_pooled and feats.shape[-1] == self.config["projection_size"]:
            return self.att_pool_head(feats)[0]
        return super().pool(feats, padding_mask)

    def head_input(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """What ``linear`` reads: the 512-d time-mean of layer4 (MERL's fine-tuning ResNet: GAP -> linear)."""
        return self.pooled_features(x, padding_mask)

    # -- MERL specifics -----------------------------------------------------------

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn1(self.conv1(x)))

    def layer4_map(self, x: torch.Tensor) -> torch.Tensor:
        """The ResNet's output (B, 512, T'), channels first (``ecg_encoder(x)`` of the original)."""
        out = self.stem(x)
        for stage in self.stages():
            out = stage(out)
        return out

    def pooled_features(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The time-mean of the layer4 map (B, 512): MERL's linear-probe feature (``avgpool``)."""
        return EcgModel.pool(self, self.layer4_map(x).transpose(1, 2), padding_mask)

    def forward_intermediates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Channels-first maps: ``stem``, ``layer1``..``layer4`` and, with the heads, ``downconv``."""
        out = {"stem": self.stem(x)}
        prev = out["stem"]
        for s, stage in enumerate(self.stages()):
            prev = out[f"layer{s + 1}"] = stage(prev)
        if self.attention_pooled:
            out["downconv"] = self.downconv(prev)
        return out

    def _require_heads(self, what: str) -> None:
        if not self.attention_pooled:
            raise ValueError(f"{what} needs ECGCLIP's projection and attention-pool heads, which this MERL "
                             "encoder lacks (import the *_ckpt.pth file for them)")

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """The CLS query's head-averaged attention on the 313 tokens, (B, 1, 313) (``att_map``)."""
        self._require_heads("attention_map")
        return self.att_pool_head(self.features(x))[1]

    def zeroshot_embedding(self, x: torch.Tensor) -> torch.Tensor:
        """``ext_ecg_emb`` L2-normalised, as ``get_ecg_emd`` and ECGCLIP's forward return it."""
        self._require_heads("zeroshot_embedding")
        return F.normalize(self.embed(x), dim=-1)

    def uma_embeddings(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pretraining's ``ecg_emb1``, ``ecg_emb2``: linear1 / linear2 of the time-mean of the downconv map."""
        self._require_heads("uma_embeddings")
        if not self.config["uma_heads"]:
            raise ValueError("this MERL model was built without linear1 / linear2")
        mean = self.features(x).mean(1)
        return self.linear1(mean), self.linear2(mean)

    def output_length(self, n_samples: int) -> int:
        return output_length(n_samples)


# ----------------------------------------------------------------------------
# zero-shot scores from text-side outputs (ecgtool builds no text tower)


def class_embeddings(pooler_output: torch.Tensor, proj_t: dict[str, torch.Tensor]) -> torch.Tensor:
    """MERL's ``get_class_emd`` from the text encoder's ``pooler_output`` (K, 768), one prompt per class:
    proj_t (Linear -> exact GELU -> Linear) -> L2 -> mean over the single template -> L2; (P, K)."""
    try:
        h = F.linear(pooler_output, proj_t["proj_t.0.weight"], proj_t["proj_t.0.bias"])
        z = F.linear(F.gelu(h), proj_t["proj_t.2.weight"], proj_t["proj_t.2.bias"])
    except KeyError as exc:
        raise CheckpointError(f"proj_t tensors lack {exc.args[0]}") from None
    z = F.normalize(z, dim=-1)                  # each (class, template) embedding
    z = F.normalize(z[:, None, :].mean(1), dim=-1)  # mean over the one template, normalised again
    return z.T


def zeroshot_scores(ecg_embedding: torch.Tensor, class_emb: torch.Tensor) -> torch.Tensor:
    """Cosine of the L2-normalised ECG embedding with each class (``get_ecg_emd``, softmax_eval=True)."""
    return F.normalize(ecg_embedding, dim=-1) @ class_emb


def text_projection(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``proj_t.*`` tensors of an ECGCLIP ``*_ckpt.pth`` (never unpickles code)."""
    sd = _state_dict(safe_load(path), str(path))
    out = {k: v.to(torch.float32) for k, v in sd.items() if k.startswith("proj_t.")}
    if not out:
        raise CheckpointError(f"{path}: no proj_t.* tensors (not an ECGCLIP checkpoint)")
    return out


# ----------------------------------------------------------------------------
# registered variants


def _variant(base: dict[str, Any], overrides: dict[str, Any], contract: InputContract) -> MerlResNet:
    overrides = dict(overrides)
    contract = overrides.pop("contract", None) or contract
    labels = overrides.pop("label_names", None)
    return MerlResNet(normalise_config({**base, **overrides}), contract=contract, label_names=labels)


@register_model("merl-resnet18")
def merl_resnet18(**overrides) -> MerlResNet:
    return _variant(RELEASED_CONFIG, overrides, CONTRACT_MERL)


@register_model("merl-resnet18-bench")
def merl_resnet18_bench(**overrides) -> MerlResNet:
    return _variant(BENCH_CONFIG, overrides, CONTRACT_BENCH)


@register_model("merl-tiny")
def merl_tiny(**overrides) -> MerlResNet:
    return _variant(TINY_CONFIG, overrides, card("merl-tiny").contract)


# ----------------------------------------------------------------------------
# the released .pth files (bare state dicts)

ENCODER_IMPORTER = "merl-encoder-pth"
CKPT_IMPORTER = "merl-ckpt-pth"

# Skipped on purpose (every other tensor must load):
# the MedCPT BERT text tower and its projection (ecgtool builds no text tower; lm_model.embeddings.position_ids,
# which files written with transformers < 4.31 carry, is part of it) ...
TEXT_TOWER_KEY = re.compile(r"^(lm_model|proj_t)\.")
# ... and the ResNet's own 10-output `linear` head, which pretraining never used and so never trained
# (loaded as the classifier only with linear_head=True).
UNUSED_HEAD_KEY = re.compile(r"^(ecg_encoder\.)?linear\.(weight|bias)$")
STAGE_KEY = re.compile(r"^layer(\d+)\.(\d+)\.")
ENCODER_PREFIX = "ecg_encoder."
_ENCODER_KEYS = ("conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer2.0.shortcut.0.weight",
                 "layer4.0.shortcut.1.running_var")


def _state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{source}: not a MERL state dict (top level is {type(obj).__name__})")
    bad = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{source}: entries that are not tensors: {', '.join(bad[:10])}",
                              "MERL's released files are bare state dicts")
    sd = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def infer_config(enc: dict[str, torch.Tensor], source: str) -> dict[str, Any]:
    """ResNet input channels, widths and blocks per stage from the encoder's tensor shapes."""
    w = enc.get("conv1.weight")
    if w is None or w.ndim != 3:
        raise CheckpointError(f"{source}: no conv1.weight (C_out, C_in, K): not a MERL ResNet")
    blocks: dict[int, set[int]] = {}
    for key in enc:
        m = STAGE_KEY.match(key)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if sorted(blocks) != [1, 2, 3, 4]:
        raise CheckpointError(f"{source}: stages layer{sorted(blocks)}, expected layer1..layer4")
    widths, n_blocks = [], []
    for s in (1, 2, 3, 4):
        ids = sorted(blocks[s])
        if ids != list(range(len(ids))):
            raise CheckpointError(f"{source}: layer{s} has block indices {ids}, expected 0..{len(ids) - 1}")
        if f"layer{s}.0.conv3.weight" in enc:
            raise CheckpointError(f"{source}: Bottleneck blocks (MERL's ResNet50 and up) are not supported",
                                  "only the BasicBlock ResNets (ResNet18, ResNet34) are")
        c1 = enc.get(f"layer{s}.0.conv1.weight")
        if c1 is None or c1.ndim != 3:
            raise CheckpointError(f"{source}: missing layer{s}.0.conv1.weight")
        widths.append(int(c1.shape[0]))
        n_blocks.append(len(ids))
    return {"in_channels": int(w.shape[1]), "widths": widths, "blocks": n_blocks}


def _sniff_encoder(info) -> bool:
    return info.kind == "torch" and all(k in info.strings for k in _ENCODER_KEYS) \
        and not info.has_key_prefix(ENCODER_PREFIX, "module." + ENCODER_PREFIX)


def _sniff_ckpt(info) -> bool:
    return info.kind == "torch" and info.has_key_prefix(ENCODER_PREFIX, "module." + ENCODER_PREFIX) \
        and info.has_key_prefix("downconv.", "att_pool_head.", "proj_e.", "proj_t.", "lm_model.",
                                "module.downconv.", "module.proj_t.")


def _check_overrides(source: str, overrides: dict[str, Any], allowed: tuple[str, ...]) -> dict[str, Any]:
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise CheckpointError(f"{source}: unknown override{'s' if len(unknown) > 1 else ''} "
                              f"{', '.join(unknown)} (this file takes {', '.join(allowed)})")
    out = dict(overrides)
    if "contract" in out and out["contract"] not in CONTRACTS:
        raise CheckpointError(f"{source}: contract={out['contract']!r}: expected one of {', '.join(CONTRACTS)}")
    if "linear_head" in out and not isinstance(out["linear_head"], bool):
        raise CheckpointError(f"{source}: linear_head={out['linear_head']!r}: expected True or False")
    if "heads" in out and (isinstance(out["heads"], bool) or not isinstance(out["heads"], int)):
        raise CheckpointError(f"{source}: heads={out['heads']!r}: expected a whole number")
    return out


def _split(sd: dict[str, torch.Tensor], keep_linear: bool) -> tuple[dict, dict, dict]:
    """(tensors to load, text-tower tensors skipped, unused-head tensors skipped)."""
    text = {k: v for k, v in sd.items() if TEXT_TOWER_KEY.match(k)}
    head = {} if keep_linear else {k: v for k, v in sd.items() if UNUSED_HEAD_KEY.match(k)}
    live = {k: v for k, v in sd.items() if k not in text and k not in head}
    return live, text, head


def _n(tensors: dict[str, torch.Tensor]) -> int:
    return sum(v.numel() for k, v in tensors.items() if not k.endswith(("running_mean", "running_var",
                                                                          "num_batches_tracked", "position_ids")))


def _finish(model: MerlResNet, live: dict, path: Path, importer: str, variant: str, what: str,
            skipped: list[str]) -> tuple[MerlResNet, list[str]]:
    source = str(path)
    match_state_dict(model.state_dict(), live, source)
    model.load_state_dict({k: (v.to(torch.float32) if v.is_floating_point() else v) for k, v in live.items()},
                          strict=True)
    model.eval()
    model.extra["provenance"] = provenance(path, importer, variant=variant)
    cfg = model.config
    n_params = sum(p.numel() for p in model.parameters())
    head = (f", attention pool P={cfg['projection_size']} over {cfg['spacial_dim']} tokens, {cfg['heads']} heads "
            f"(heads: the code's constant, not stored)" if cfg["projection_size"] else ", no ECGCLIP heads")
    lines = [f"read {source} ({what}, sha256 {model.extra['provenance']['sha256']})"]
    lines.append(f"  ResNet-1D: {cfg['in_channels']} leads, widths {cfg['widths']}, blocks {cfg['blocks']}{head}"
                 + (f", linear head {cfg['n_classes']} outputs" if cfg["n_classes"] else ""))
    lines.append(f"  contract ({variant}): {model.contract.describe()}")
    lines.append(f"  embed(): {'attention-pooled ext_ecg_emb' if cfg['projection_size'] else 'time-mean of layer4'}, "
                 f"{model.embed_dim}-d")
    lines.append(f"  {len(live)} tensors loaded ({n_params:,} parameters)"
                 + ("; " + "; ".join(skipped) if skipped else ""))
    return model, lines


@register_importer(ENCODER_IMPORTER, _sniff_encoder, "MERL ResNet encoder .pth (res18_best_encoder.pth)")
def import_merl_encoder(path, **overrides) -> tuple[MerlResNet, list[str]]:
    """Load a released MERL ``*_encoder.pth`` (the bare ResNet state dict) into a :class:`MerlResNet`.

    Overrides: ``contract`` = ``"bench"`` (default: the ICLR-2026 benchmark's
    2.5 s raw-mV windows, the way it runs this file) or ``"merl"`` (MERL's own
    10 s min-max contract, its linear-probe setting); ``linear_head=True``
    keeps the ResNet's untrained 10-output ``linear`` as the classifier."""
    path = Path(path)
    source = str(path)
    ov = _check_overrides(source, overrides, ("contract", "linear_head"))
    keep_linear = bool(ov.get("linear_head", False))
    sd = _state_dict(safe_load(path), source)
    if any(k.startswith(ENCODER_PREFIX) for k in sd):
        raise CheckpointError(f"{source}: an ECGCLIP checkpoint, not a bare encoder")
    live, text, head = _split(sd, keep_linear)
    if text:
        raise CheckpointError(f"{source}: text-tower tensors ({', '.join(list(text)[:3])}) in an encoder file")
    cfg = {**BENCH_CONFIG, **infer_config(live, source)}
    if keep_linear and "linear.weight" in live:
        cfg["n_classes"] = int(live["linear.weight"].shape[0])
    which = ov.get("contract", "bench")
    contract = CONTRACTS[which]
    variant = "merl-resnet18-bench" if which == "bench" else "merl-resnet18-bench (contract merl)"
    if cfg["in_channels"] != len(contract.leads):
        contract = replace(contract, leads=tuple(f"ch{i}" for i in range(cfg["in_channels"])), preset=None)
    model = MerlResNet(normalise_config(cfg), contract=contract)
    skipped = [f"{len(head)} tensors of the ResNet's untrained linear head skipped ({_n(head):,} parameters)"] \
        if head else []
    return _finish(model, live, path, ENCODER_IMPORTER, variant, "MERL ResNet encoder", skipped)


@register_importer(CKPT_IMPORTER, _sniff_ckpt, "MERL ECGCLIP checkpoint .pth (res18_best_ckpt.pth)")
def import_merl_ckpt(path, **overrides) -> tuple[MerlResNet, list[str]]:
    """Load a released MERL ``*_ckpt.pth`` (the bare ECGCLIP state dict) into a :class:`MerlResNet` with its
    ECG heads, under MERL's own contract.

    Overrides: ``heads`` (attention-pool heads, default 4: not stored in the
    file); ``linear_head=True`` keeps the ResNet's untrained ``linear``."""
    path = Path(path)
    source = str(path)
    ov = _check_overrides(source, overrides, ("heads", "linear_head"))
    keep_linear = bool(ov.get("linear_head", False))
    sd = _state_dict(safe_load(path), source)
    if f"{ENCODER_PREFIX}to_patch_embedding.weight" in sd or any(k.startswith("proj_e.") for k in sd):
        raise CheckpointError(f"{source}: a MERL ViT checkpoint; ecgtool reads only the ResNet18 MERL")
    live, text, head = _split(sd, keep_linear)
    # ecg_encoder.X -> X; the ECGCLIP heads keep their names
    live = {(k[len(ENCODER_PREFIX):] if k.startswith(ENCODER_PREFIX) else k): v for k, v in live.items()}
    dc, pos = live.get("downconv.weight"), live.get("att_pool_head.positional_embedding")
    if dc is None or pos is None or dc.ndim != 3 or pos.ndim != 3:
        raise CheckpointError(f"{source}: no downconv.weight / att_pool_head.positional_embedding: "
                              "not a MERL ResNet ECGCLIP checkpoint")
    cfg = {**RELEASED_CONFIG, **infer_config(live, source), "projection_size": int(dc.shape[0]),
           "spacial_dim": int(pos.shape[1]) - 1, "uma_heads": "linear1.weight" in live or "linear2.weight" in live,
           "heads": ov.get("heads", RELEASED_CONFIG["heads"])}
    if keep_linear and "linear.weight" in live:
        cfg["n_classes"] = int(live["linear.weight"].shape[0])
    try:
        cfg = normalise_config(cfg)
        model = MerlResNet(cfg, contract=CONTRACT_MERL)
    except ValueError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    skipped = []
    if text:
        skipped.append(f"{len(text)} text-tower tensors skipped (lm_model.*, proj_t.*: {_n(text):,} parameters)")
    else:
        skipped.append("no text tower in the file")
    if head:
        skipped.append(f"{len(head)} tensors of the ResNet's untrained linear head skipped ({_n(head):,} parameters)")
    return _finish(model, live, path, CKPT_IMPORTER, "merl-resnet18", "MERL ECGCLIP checkpoint", skipped)
