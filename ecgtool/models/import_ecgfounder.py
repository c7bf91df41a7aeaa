"""Importer for the released ECGFounder checkpoints (``12_lead_ECGFounder.pth``, ``1_lead_ECGFounder.pth``).

The released files are ``torch.save`` pickles of ``{'epoch', 'step',
'state_dict', 'optimizer', 'scheduler', 'val_auroc'}`` where ``val_auroc`` is
a numpy float64. They are read with ``torch.load(weights_only=True)`` and only
the two numpy globals that scalar needs allowed, so a pickle that would run
code is refused before anything runs. The architecture is read from tensor
shapes; every live tensor must map onto the model and the unused BatchNorm
tensors are skipped by an explicit pattern.
"""

from __future__ import annotations

import hashlib
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ecgtool.errors import CheckpointError
from ecgtool.models.checkpoint import check_state_dict
from ecgtool.models.net1d import CONTRACT_1, CONTRACT_12, Net1D, ecgfounder_labels, normalise_config

IMPORTER = "ecgfounder-pth"

BN_KEY = re.compile(
    r"^(first_bn|stage_list\.\d+\.block_list\.\d+\.bn[123])\.(weight|bias|running_mean|running_var|num_batches_tracked)$"
)
BLOCK_KEY = re.compile(r"^stage_list\.(\d+)\.block_list\.(\d+)\.")


def _numpy_globals() -> list:
    """The numpy callables a pickled numpy float64 scalar refers to (and nothing else)."""
    import numpy as np

    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import scalar
    return [scalar, np.dtype, type(np.dtype(np.float64))]  # numpy 2 rebuilds the dtype as Float64DType


def safe_torch_load(path: str | Path) -> Any:
    """``torch.load`` with ``weights_only=True`` plus the numpy scalar globals; CheckpointError on failure."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one message
        text = str(exc).strip().splitlines()
        first = text[0] if text else type(exc).__name__
        if "Weights only load failed" in str(exc) or isinstance(exc, pickle.UnpicklingError):
            found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
            if found:
                detail = f"it would call {found.group(1)}"
            else:
                detail = next((t.strip() for t in text if "WeightsUnpickler error" in t), first.strip())
            raise CheckpointError(
                f"{path}: refused to unpickle: {detail}, which is not a tensor or plain value",
                "a released checkpoint holds only tensors and plain values; this file could run code on load",
            ) from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {first})",
                              "the file may be truncated or not a checkpoint; download it again") from None


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class ImportReport:
    """What the importer read (printed by ``ecgtool models import``)."""

    source: str
    sha256: str
    config: dict
    live_keys: int
    bn_keys_ignored: int
    bn_params_ignored: int
    parameters: int
    top_level: dict = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"read {self.source} (sha256 {self.sha256})"]
        if self.top_level:
            out.append("  " + ", ".join(f"{k}={v}" for k, v in self.top_level.items()))
        c = self.config
        out.append(f"  Net1D: {c['in_channels']} input channels, stem {c['base_filters']}, "
                   f"{len(c['filter_list'])} stages widths {c['filter_list']} blocks {c['m_blocks_list']}, "
                   f"kernel {c['kernel_size']}, groups width {c['groups_width']}, {c['n_classes']} outputs")
        out.append(f"  {self.live_keys} tensors loaded ({self.parameters:,} parameters); "
                   f"{self.bn_keys_ignored} unused BatchNorm entries ignored ({self.bn_params_ignored:,} parameters)")
        return out


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



def import_ecgfounder(path: str | Path) -> tuple[Net1D, ImportReport]:
    """Load a released ECGFounder ``.pth`` (or a bare Net1D state dict) into a :class:`Net1D`."""
    from datetime import datetime, timezone

    from ecgtool import __version__

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    source = str(path)
    obj = safe_torch_load(path)
    sd, top = extract_state_dict(obj, source)
    bn = {k: v for k, v in sd.items() if BN_KEY.match(k)}
    live = {k: v for k, v in sd.items() if k not in bn}
    cfg = infer_config(live, source)
    contract = CONTRACT_12 if cfg["in_channels"] == 12 else CONTRACT_1 if cfg["in_channels"] == 1 else None
    labels = list(ecgfounder_labels()) if cfg["n_classes"] == 150 else None
    model = Net1D(cfg, contract=contract, label_names=labels)
    check_state_dict(model, live, source)
    model.load_state_dict({k: v.to(torch.float32) for k, v in live.items()}, strict=True)
    model.eval()
    digest = sha256_file(path)
    model.extra["provenance"] = {
        "source": path.name, "sha256": digest, "importer": IMPORTER, "ecgtool_version": __version__,
        "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), **{k: v for k, v in top.items()},
    }
    report = ImportReport(
        source=source, sha256=digest, config=cfg, live_keys=len(live), bn_keys_ignored=len(bn),
        bn_params_ignored=sum(v.numel() for k, v in bn.items() if not k.endswith(("running_mean", "running_var",
                                                                                 "num_batches_tracked"))),
        parameters=sum(p.numel() for p in model.parameters()), top_level=top,
    )
    return model, report


def load_ecgfounder_checkpoint(path: str | Path) -> Net1D:
    return import_ecgfounder(path)[0]
