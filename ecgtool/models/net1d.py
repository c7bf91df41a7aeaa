"""Net1D, the ECGFounder network (a 1-D RegNet-style CNN).

The arithmetic follows ../shared/reference/ecgfounder.md: SAME-padded
convolutions with bias, a Swish stem without max-pool, stages of
pre-activation bottleneck blocks (1x1 conv, grouped conv, 1x1 conv) with
squeeze-excitation, a weight-free shortcut (max-pool after one zero on the
right when the block downsamples, channel zero-padding split front/back when
the width grows), mean pooling over time and a dense head.

The released model has BatchNorm tensors in its state dict that it never uses
(``use_bn=False``); this module does not create them, and the importer skips
them by name. Parameter names match the released ones, so a released state
dict (minus BN) loads as is.
"""

from __future__ import annotations

import math
from pathlib import Path
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ecgtool.models.contract import InputContract
from ecgtool.models.registry import register_model
from ecgtool.signal.leads import STANDARD_12

FAMILY = "net1d"

# The released configuration (12-lead, 150 outputs).
RELEASED_CONFIG: dict[str, Any] = {
    "in_channels": 12,
    "base_filters": 64,
    "ratio": 1.0,
    "filter_list": [64, 160, 160, 400, 400, 1024, 1024],
    "m_blocks_list": [2, 2, 2, 3, 3, 4, 4],
    "kernel_size": 16,
    "stride": 2,
    "groups_width": 16,
    "n_classes": 150,
}
# The released file counts 66,368 BatchNorm parameters that the model never uses.
RELEASED_BN_PARAMS = 66_368

LABELS_RESOURCE = "ecgfounder-150.txt"


def _contract(leads) -> InputContract:
    return InputContract(fs=500.0, leads=tuple(leads), n_samples=5000, normalisation="record-zscore",
                         preset="ecgfounder")


CONTRACT_12 = _contract(STANDARD_12)
CONTRACT_1 = _contract(("I",))


@lru_cache(maxsize=1)
def ecgfounder_labels() -> tuple[str, ...]:
    """ECGFounder's 150 output names (index i = output i), shipped with the package."""
    path = Path(__file__).resolve().parents[1] / "labels" / "vocab" / LABELS_RESOURCE
    text = path.read_text(encoding="utf-8")
    names = tuple(line.rstrip("\n") for line in text.splitlines() if line.strip() and not line.startswith("#"))
    if len(names) != 150:
        raise RuntimeError(f"{LABELS_RESOURCE}: expected 150 label names, found {len(names)}")
    return names


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class SameConv1d(nn.Module):
    """Conv1d whose output length is ceil(L / stride), zero-padded p//2 left, the rest right."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, groups=groups, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[-1]
        out = (length + self.stride - 1) // self.stride
        pad = max(0, (out - 1) * self.stride + self.kernel_size - length)
        if pad:
            x = F.pad(x, (pad // 2, pad - pad // 2))
        return self.conv(x)


class Block(nn.Module):
    """Pre-activation bottleneck with grouped convolution and squeeze-excitation."""

    def __init__(self, in_channels: int, out_channels: int, ratio: float, kernel_size: int, stride: int,
                 groups_width: int, first: bool):
        super().__init__()
        mid = int(out_channels * ratio)
        if out_channels % groups_width or mid % (out_channels // groups_width):
            raise ValueError(f"width {out_channels} (middle {mid}) is not divisible into groups of {groups_width}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.first = first
        self.conv1 = SameConv1d(in_channels, mid, 1)
        self.conv2 = SameConv1d(mid, mid, kernel_size, stride=stride, groups=out_channels // groups_width)
        self.conv3 = SameConv1d(mid, out_channels, 1)
        self.se_fc1 = nn.Linear(out_channels, out_channels // 2)
        self.se_fc2 = nn.Linear(out_channels // 2, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self.first else swish(x)
        out = self.conv1(out)
        out = self.conv2(swish(out))
        out = self.conv3(swish(out))
        se = out.mean(-1)
        se = torch.sigmoid(self.se_fc2(swish(self.se_fc1(se))))
        out = out * se.unsqueeze(-1)

        identity = x
        if self.stride > 1:
            # SAME padding for a stride-1 window of `stride` samples (one zero on the right for
            # stride 2), then a non-overlapping max over `stride` samples
            p = self.stride - 1
            identity = F.max_pool1d(F.pad(identity, (p // 2, p - p // 2)), self.stride)
        grow = self.out_channels - self.in_channels
        if grow:
            identity = F.pad(identity, (0, 0, grow // 2, grow - grow // 2))
        return out + identity


class Stage(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, n_blocks: int, index: int, cfg: dict):
        super().__init__()
        self.out_channels = out_channels
        self.block_list = nn.ModuleList(
            Block(in_channels if b == 0 else out_channels, out_channels, cfg["ratio"], cfg["kernel_size"],
                  cfg["stride"] if b == 0 else 1, cfg["groups_width"], first=(index == 0 and b == 0))
            for b in range(n_blocks)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block_list:
            x = block(x)
        return x


def normalise_config(config: dict[str, Any]) -> dict[str, Any]:
    """A complete, JSON-serialisable config (defaults from the released one), checked."""
    unknown = set(config) - set(RELEASED_CONFIG)
    if unknown:
        raise ValueError(f"unknown Net1D config keys: {', '.join(sorted(unknown))}")
    cfg = {**RELEASED_CONFIG, **config}
    cfg["filter_list"] = [int(v) for v in cfg["filter_list"]]
    cfg["m_blocks_list"] = [int(v) for v in cfg["m_blocks_list"]]
    for key in ("in_channels", "base_filters", "kernel_size", "stride", "groups_width"):
        cfg[key] = int(cfg[key])
    cfg["ratio"] = float(cfg["ratio"])
    cfg["n_classes"] = None if cfg["n_classes"] in (None, 0) else int(cfg["n_classes"])
    if len(cfg["filter_list"]) != len(cfg["m_blocks_list"]) or not cfg["filter_list"]:
        raise ValueError("filter_list and m_blocks_list must be non-empty and of the same length")
    return cfg


def bn_parameter_count(config: dict[str, Any]) -> int:
    """Weights and biases of the BatchNorm layers the original code creates (and never uses):
    one after the stem, and per block bn1 over its input width and bn2/bn3 over its middle width."""
    cfg = normalise_config(config)
    widths = [cfg["base_filters"]] + cfg["filter_list"]
    total = 2 * cfg["base_filters"]
    for s, n in enumerate(cfg["m_blocks_list"]):
        mid = int(widths[s + 1] * cfg["ratio"])
        for b in range(n):
            total += 2 * ((widths[s] if b == 0 else widths[s + 1]) + 2 * mid)
    return total


class Net1D(nn.Module):
    """Net1D with the shared model interface (``features``/``pool``/``embed``/``logits``)."""

    family = FAMILY

    def __init__(self, config: dict[str, Any] | None = None, contract: InputContract | None = None,
                 label_names: list[str] | None = None):
        super().__init__()
        cfg = normalise_config(config or {})
        self.config = cfg
        self.contract = contract or (CONTRACT_12 if cfg["in_channels"] == 12 else
                                     CONTRACT_1 if cfg["in_channels"] == 1 else
                                     _contract([f"ch{i}" for i in range(cfg["in_channels"])]))
        if len(self.contract.leads) != cfg["in_channels"]:
            raise ValueError(f"contract has {len(self.contract.leads)} leads but the model takes "
                             f"{cfg['in_channels']} input channels")
        if label_names is not None and (cfg["n_classes"] is None or len(label_names) != cfg["n_classes"]):
            raise ValueError(f"{len(label_names)} label names for {cfg['n_classes']} outputs")
        self.label_names = list(label_names) if label_names is not None else None
        self.extra: dict[str, Any] = {}

        self.first_conv = SameConv1d(cfg["in_channels"], cfg["base_filters"], cfg["kernel_size"], stride=2)
        widths = [cfg["base_filters"]] + cfg["filter_list"]
        self.stage_list = nn.ModuleList(
            Stage(widths[i], widths[i + 1], n, i, cfg) for i, n in enumerate(cfg["m_blocks_list"])
        )
        self.embed_dim = widths[-1]
        self.dense = nn.Linear(self.embed_dim, cfg["n_classes"]) if cfg["n_classes"] else None

    @property
    def n_classes(self) -> int | None:
        return self.config["n_classes"]

    def released_layout_bn_parameters(self) -> int:
        """BatchNorm weights+biases the released state dict carries for this config (unused by the model)."""
        return bn_parameter_count(self.config)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return swish(self.first_conv(x))

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[stem output, stage 0 output, …, last stage output], each (B, C, T)."""
        outs = [self.stem(x)]
        for stage in self.stage_list:
            outs.append(stage(outs[-1]))
        return outs

    def output_length(self, n_samples: int) -> int:
        length = math.ceil(n_samples / 2)
        for _ in self.stage_list:
            length = math.ceil(length / self.config["stride"])
        return length

    def _stage_index(self, layer: int | None) -> int:
        n = len(self.stage_list)
        if layer is None:
            return n - 1
        if not -n <= layer < n:
            raise ValueError(f"layer {layer} out of range for {n} stages")
        return layer % n

    def feature_dim(self, layer: int | None = None) -> int:
        """Width D of :meth:`features` for the last stage or stage ``layer``; checks ``layer``."""
        return int(self.stage_list[self._stage_index(layer)].out_channels)

    def features(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None,
                 layer: int | None = None) -> torch.Tensor:
        """Output of the last stage, or of stage ``layer`` (0-based), time-major: (B, T', D).

        ``padding_mask`` is accepted and not used (the network has no notion of
        padding; pool with a mask at feature resolution instead)."""
        out = self.stem(x)
        for stage in self.stage_list[: self._stage_index(layer) + 1]:
            out = stage(out)
        return out.transpose(1, 2)

    def frame_padding_mask(self, padding_mask: torch.Tensor | None, n_frames: int) -> torch.Tensor | None:
        """A (B, T') frame mask from a sample-level (B, T) or frame-level mask (True = padding).

        Padding is taken to sit at the end of each row: a frame counts as real when
        it starts inside the real samples.
        """
        if padding_mask is None:
            return None
        pm = padding_mask.bool()
        if pm.shape[-1] == n_frames:
            return pm
        valid = (~pm).sum(-1).to(torch.float64)
        n_valid = torch.ceil(valid * n_frames / pm.shape[-1])
        return torch.arange(n_frames, device=pm.device)[None, :] >= n_valid[:, None]

    def pool(self, feats: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean over time; frames marked in ``padding_mask`` (sample- or frame-level) are left out."""
        pm = self.frame_padding_mask(padding_mask, feats.shape[1])
        if pm is None:
            return feats.mean(1)
        keep = (~pm).to(feats.dtype).unsqueeze(-1)
        return (feats * keep).sum(1) / keep.sum(1).clamp_min(1.0)

    def embed(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled embedding (B, D): the mean of the last stage output over time (the released head's input)."""
        return self.pool(self.features(x), padding_mask)

    def logits(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.dense is None:
            raise ValueError("this Net1D has no classification head (n_classes is None)")
        return self.dense(self.embed(x, padding_mask))

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.logits(x, padding_mask) if self.dense is not None else self.embed(x, padding_mask)


def model_from_config(config: dict[str, Any], contract: InputContract | dict | None = None,
                      label_names: list[str] | None = None) -> Net1D:
    """Build a Net1D from a stored config (used by the checkpoint loader)."""
    if isinstance(contract, dict):
        contract = InputContract.from_dict(contract)
    return Net1D(config, contract=contract, label_names=label_names)


def _variant(base: dict[str, Any], overrides: dict[str, Any]) -> Net1D:
    contract = overrides.pop("contract", None)
    cfg = normalise_config({**base, **overrides})
    labels = list(ecgfounder_labels()) if cfg["n_classes"] == 150 else None
    return Net1D(cfg, contract=contract, label_names=labels)


def _released(base: dict[str, Any], overrides: dict[str, Any]) -> Net1D:
    model = _variant(base, overrides)
    # the released .pth also stores the BatchNorm tensors the model never uses
    model.released_file_parameters = sum(p.numel() for p in model.parameters()) + bn_parameter_count(model.config)
    return model


@register_model("ecgfounder-12lead", FAMILY, CONTRACT_12,
                "ECGFounder Net1D, 12 leads, 150 labels (released configuration)")
def ecgfounder_12lead(**overrides) -> Net1D:
    return _released(RELEASED_CONFIG, overrides)


@register_model("ecgfounder-1lead", FAMILY, CONTRACT_1,
                "ECGFounder Net1D, Lead I only, 150 labels (released configuration)")
def ecgfounder_1lead(**overrides) -> Net1D:
    return _released({**RELEASED_CONFIG, "in_channels": 1}, overrides)


SMALL_CONFIG = {**RELEASED_CONFIG, "base_filters": 32, "filter_list": [32, 64, 64, 128, 128, 256, 256],
                "m_blocks_list": [1, 1, 1, 2, 2, 2, 2]}
TINY_CONFIG = {**RELEASED_CONFIG, "base_filters": 16, "filter_list": [16, 32, 32, 48],
               "m_blocks_list": [2, 2, 1, 2], "groups_width": 8}


@register_model("ecgfounder-small", FAMILY, CONTRACT_12, "Net1D, 12 leads, narrower and shallower (CPU)")
def ecgfounder_small(**overrides) -> Net1D:
    return _variant(SMALL_CONFIG, overrides)


@register_model("ecgfounder-tiny", FAMILY, CONTRACT_12, "Net1D, 12 leads, 4 small stages (tests)")
def ecgfounder_tiny(**overrides) -> Net1D:
    return _variant(TINY_CONFIG, overrides)
