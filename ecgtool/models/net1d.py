"""Net1D, the ECGFounder network (a 1-D RegNet-style CNN), and the importer of its released files.

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

The released files (``12_lead_ECGFounder.pth``, ``1_lead_ECGFounder.pth``) are
``torch.save`` pickles of ``{'epoch', 'step', 'state_dict', 'optimizer',
'scheduler', 'val_auroc'}`` where ``val_auroc`` is a numpy float64 (pickled as
``numpy.core.multiarray.scalar`` by the 2024 release, numpy 1.x). They are read
by :func:`ecgtool.models.serial.safe_load`; the architecture is read from
tensor shapes.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ecgtool.errors import CheckpointError
from ecgtool.models.base import EcgModel
from ecgtool.models.card import card
from ecgtool.models.contract import InputContract
from ecgtool.models.registry import refuse_overrides, register_family, register_importer, register_model
from ecgtool.models.serial import match_state_dict, provenance, safe_load

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

CONTRACT_12 = card("ecgfounder-12lead").contract
CONTRACT_1 = card("ecgfounder-1lead").contract


def _contract(in_channels: int) -> InputContract:
    if in_channels == 12:
        return CONTRACT_12
    if in_channels == 1:
        return CONTRACT_1
    from dataclasses import replace

    return replace(CONTRACT_12, leads=tuple(f"ch{i}" for i in range(in_channels)), preset=None)


def ecgfounder_labels() -> tuple[str, ...]:
    """ECGFounder's 150 output names (index i = output i), from labels/vocab."""
    names = tuple(card("ecgfounder-12lead").label_names())
    if len(names) != 150:
        raise RuntimeError(f"ecgfounder-150: expected 150 label names, found {len(names)}")
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


@register_family
class Net1D(EcgModel):
    """Net1D behind the model interface (``features`` = a stage's output, time-major)."""

    family = FAMILY
    head_name = "dense"

    def __init__(self, config: dict[str, Any] | None = None, contract: InputContract | None = None,
                 label_names: list[str] | None = None):
        cfg = normalise_config(config or {})
        contract = contract or _contract(cfg["in_channels"])
        self.check_io(contract, cfg["in_channels"], label_names, cfg["n_classes"])
        super().__init__(cfg, contract, label_names)

        self.first_conv = SameConv1d(cfg["in_channels"], cfg["base_filters"], cfg["kernel_size"], stride=2)
        widths = [cfg["base_filters"]] + cfg["filter_list"]
        self.stage_list = nn.ModuleList(
            Stage(widths[i], widths[i + 1], n, i, cfg) for i, n in enumerate(cfg["m_blocks_list"])
        )
        self.dense = self.make_classifier(cfg["n_classes"]) if cfg["n_classes"] else None

    # -- the model interface ---------------------------------------------------

    @property
    def embed_dim(self) -> int:
        return int(self.stage_list[-1].out_channels)

    def layer_modules(self) -> list[nn.Module]:
        return list(self.stage_list)

    def input_modules(self) -> list[nn.Module]:
        return [self.first_conv, self.stage_list[0]]

    def classifier_config(self, n_labels: int | None) -> dict[str, Any]:
        return {**self.config, "n_classes": n_labels}

    def make_classifier(self, n_labels: int) -> nn.Module:
        return nn.Linear(self.embed_dim, n_labels)

    def feature_dim(self, layer: int | None = None) -> int:
        """Width D of :meth:`features` for the last stage or stage ``layer``; checks ``layer``."""
        i = self.layer_index(layer)
        return int(self.stage_list[-1 if i is None else i].out_channels)

    def features(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None,
                 layer: int | None = None) -> torch.Tensor:
        """Output of the last stage, or of stage ``layer`` (0-based), time-major: (B, T', D).

        ``padding_mask`` is accepted and not used (the network has no notion of
        padding; :meth:`pool` leaves padded frames out)."""
        i = self.layer_index(layer)
        out = self.stem(x)
        for stage in self.stage_list[: (len(self.stage_list) if i is None else i + 1)]:
            out = stage(out)
        return out.transpose(1, 2)

    # -- Net1D specifics -------------------------------------------------------

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


# ----------------------------------------------------------------------------
# registered variants


def _variant(base: dict[str, Any], overrides: dict[str, Any]) -> Net1D:
    overrides = dict(overrides)
    contract = overrides.pop("contract", None)
    labels = overrides.pop("label_names", None)
    cfg = normalise_config({**base, **overrides})
    if labels is None and cfg["n_classes"] == 150:
        labels = list(ecgfounder_labels())
    return Net1D(cfg, contract=contract, label_names=labels)


@register_model("ecgfounder-12lead")
def ecgfounder_12lead(**overrides) -> Net1D:
    return _variant(RELEASED_CONFIG, overrides)


@register_model("ecgfounder-1lead")
def ecgfounder_1lead(**overrides) -> Net1D:
    return _variant({**RELEASED_CONFIG, "in_channels": 1}, overrides)


SMALL_CONFIG = {**RELEASED_CONFIG, "base_filters": 32, "filter_list": [32, 64, 64, 128, 128, 256, 256],
                "m_blocks_list": [1, 1, 1, 2, 2, 2, 2]}
TINY_CONFIG = {**RELEASED_CONFIG, "base_filters": 16, "filter_list": [16, 32, 32, 48],
               "m_blocks_list": [2, 2, 1, 2], "groups_width": 8}


@register_model("ecgfounder-small")
def ecgfounder_small(**overrides) -> Net1D:
    return _variant(SMALL_CONFIG, overrides)


@register_model("ecgfounder-tiny")
def ecgfounder_tiny(**overrides) -> Net1D:
    return _variant(TINY_CONFIG, overrides)


# ecgtool's default model: the small Net1D at 250 Hz over 10 s windows (2,500 samples:
# 1,250 after the stem, 10 frames after the seven stride-2 stages), no head of its own
# (finetuning adds the 9-output classifier). Chosen for 2 CPU cores: a convolutional
# update costs a fraction of a transformer's over the same samples (docs/default-model.md).
DEFAULT_CONFIG = {**SMALL_CONFIG, "n_classes": None}
DEFAULT_CONTRACT = card("ecgtool-default").contract


@register_model("ecgtool-default")
def ecgtool_default(**overrides) -> Net1D:
    overrides.setdefault("contract", DEFAULT_CONTRACT)
    return _variant(DEFAULT_CONFIG, overrides)


# ----------------------------------------------------------------------------
# the released .pth files

IMPORTER = "ecgfounder-pth"

BN_KEY = re.compile(
    r"^(first_bn|stage_list\.\d+\.block_list\.\d+\.bn[123])\.(weight|bias|running_mean|running_var|num_batches_tracked)$"
)
BLOCK_KEY = re.compile(r"^stage_list\.(\d+)\.block_list\.(\d+)\.")


def extract_state_dict(obj: Any, source: str) -> tuple[dict[str, torch.Tensor], dict]:
    """The state dict inside a released checkpoint (or a bare state dict), without a ``module.`` prefix."""
    top: dict = {}
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        for key in ("epoch", "step", "val_auroc"):
            if key in obj:
                value = obj[key]
                value = value.item() if hasattr(value, "item") else value
                if isinstance(value, (int, float)):
                    top[key] = float(value) if key == "val_auroc" else value
        sd = obj["state_dict"]
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd = obj
    else:
        raise CheckpointError(f"{source}: no ECGFounder state_dict inside (top-level "
                              f"{type(obj).__name__}{' keys ' + ', '.join(map(str, list(obj)[:8])) if isinstance(obj, dict) else ''})")
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{source}: state_dict entries that are not tensors: {', '.join(map(str, bad[:10]))}")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return dict(sd), top


def infer_config(sd: dict[str, torch.Tensor], source: str = "checkpoint") -> dict:
    """Net1D architecture from tensor shapes: stages, blocks per stage, widths, groups width, classes."""
    w = sd.get("first_conv.conv.weight")
    if w is None or w.ndim != 3:
        raise CheckpointError(f"{source}: no first_conv.conv.weight (C_out, C_in, K): not an ECGFounder Net1D state dict")
    base, in_ch, k = (int(v) for v in w.shape)
    blocks: dict[int, set[int]] = {}
    for key in sd:
        m = BLOCK_KEY.match(key)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if not blocks or sorted(blocks) != list(range(len(blocks))):
        raise CheckpointError(f"{source}: stage indices {sorted(blocks)} are not 0..N-1")
    filters, m_blocks, ratios, gws = [], [], set(), set()
    for s in range(len(blocks)):
        ids = sorted(blocks[s])
        if ids != list(range(len(ids))):
            raise CheckpointError(f"{source}: stage {s} has block indices {ids}, expected 0..{len(ids) - 1}")
        m_blocks.append(len(ids))
        for b in ids:
            pre = f"stage_list.{s}.block_list.{b}."
            try:
                c1, c2, c3 = (sd[pre + f"conv{i}.conv.weight"] for i in (1, 2, 3))
            except KeyError as exc:
                raise CheckpointError(f"{source}: missing {exc.args[0]}") from None
            out, mid = int(c3.shape[0]), int(c1.shape[0])
            if b == 0:
                filters.append(out)
            per_group = int(c2.shape[1])
            if per_group <= 0 or mid % per_group:
                raise CheckpointError(f"{source}: {pre}conv2.conv.weight shape {tuple(c2.shape)} does not divide "
                                      f"{mid} channels into groups")
            groups = mid // per_group
            if out % groups:
                raise CheckpointError(f"{source}: {pre}conv2 has {groups} groups, which do not divide width {out}")
            gws.add(out // groups)
            ratios.add(mid / out)
    if len(gws) != 1 or len(ratios) != 1:
        raise CheckpointError(f"{source}: inconsistent groups width {sorted(gws)} or bottleneck ratio {sorted(ratios)}")
    dense = sd.get("dense.weight")
    cfg = {
        "in_channels": in_ch, "base_filters": base, "ratio": ratios.pop(), "filter_list": filters,
        "m_blocks_list": m_blocks, "kernel_size": k, "stride": 2, "groups_width": gws.pop(),
        "n_classes": int(dense.shape[0]) if dense is not None and dense.ndim == 2 else None,
    }
    return normalise_config(cfg)


def _sniff(info) -> bool:
    return info.kind == "torch" and info.has_key_prefix("first_conv.conv.", "module.first_conv.")


@register_importer(IMPORTER, _sniff, "ECGFounder .pth (12_lead_ECGFounder.pth, 1_lead_ECGFounder.pth)")
def import_ecgfounder(path, **overrides) -> tuple[Net1D, list[str]]:
    """Load a released ECGFounder ``.pth`` (or a bare Net1D state dict) into a :class:`Net1D`."""
    from pathlib import Path

    refuse_overrides(path, overrides, "ECGFounder files")
    path = Path(path)
    source = str(path)
    sd, top = extract_state_dict(safe_load(path), source)
    bn = {k: v for k, v in sd.items() if BN_KEY.match(k)}
    live = {k: v for k, v in sd.items() if k not in bn}
    cfg = infer_config(live, source)
    labels = list(ecgfounder_labels()) if cfg["n_classes"] == 150 else None
    model = Net1D(cfg, contract=_contract(cfg["in_channels"]), label_names=labels)
    match_state_dict(model.state_dict(), live, source)
    model.load_state_dict({k: v.to(torch.float32) for k, v in live.items()}, strict=True)
    model.eval()
    model.extra["provenance"] = provenance(path, IMPORTER, **top)
    n_params = sum(p.numel() for p in model.parameters())
    bn_params = sum(v.numel() for k, v in bn.items()
                    if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    lines = [f"read {source} (ECGFounder, sha256 {model.extra['provenance']['sha256']})"]
    if top:
        lines.append("  " + ", ".join(f"{k}={v}" for k, v in top.items()))
    lines.append(f"  Net1D: {cfg['in_channels']} input channels, stem {cfg['base_filters']}, "
                 f"{len(cfg['filter_list'])} stages widths {cfg['filter_list']} blocks {cfg['m_blocks_list']}, "
                 f"kernel {cfg['kernel_size']}, groups width {cfg['groups_width']}, {cfg['n_classes']} outputs")
    lines.append(f"  {len(live)} tensors loaded ({n_params:,} parameters); "
                 f"{len(bn)} unused BatchNorm entries ignored ({bn_params:,} parameters)")
    return model, lines
