"""The model interface every family implements (in the spirit of timm's models).

A family is one module under ``ecgtool/models/`` plus its card in
``ecgtool/models/cards/``. Its model class subclasses :class:`EcgModel` and
implements the few methods marked *family* below; everything else (pooling,
logits, classifier reset, freezing, layer-wise parameter groups) is generic,
so no module outside ``ecgtool/models`` needs to know which family it runs.

Tensors are channels-first: ``x`` is (B, L, T) float32 in the layout of the
model's input contract (after :meth:`EcgModel.prepare`); features are
time-major (B, T', D); a ``padding_mask`` is True where a sample (B, T) or a
frame (B, T') is padding.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from torch import nn

from ecgtool.models.contract import InputContract

FREEZE_MODES = ("linear", "frozen-features", "full")

# capabilities a family may declare
ATTENTION = "attention"            # attention(x, layer) gives (B, T', T') maps
WAV2VEC2_PRETRAINING = "wav2vec2"  # ecgtool pretrain's objective (extract / apply_mask / encode / quantize)


class EcgModel(nn.Module):
    """Base class of every registered model.

    Attributes: ``family`` (class), ``capabilities`` (class), ``config`` (the
    architecture, JSON-serialisable; what a native checkpoint stores),
    ``contract`` (:class:`InputContract`), ``label_names`` (outputs, or None),
    ``extra`` (provenance, thresholds, temperature, ... kept by checkpoints).
    """

    family: ClassVar[str] = ""
    capabilities: ClassVar[frozenset[str]] = frozenset()
    head_name: ClassVar[str | None] = "head"  # attribute holding the classifier; None: no head possible

    def __init__(self, config: dict[str, Any], contract: InputContract, label_names: Sequence[str] | None = None):
        super().__init__()
        self.config = dict(config)
        self.contract = contract
        self.label_names = [str(n) for n in label_names] if label_names is not None else None
        self.extra: dict[str, Any] = {}
        self.card = None  # the registered variant's card, when built from the registry

    @staticmethod
    def check_io(contract: InputContract, n_inputs: int, label_names: Sequence[str] | None,
                 n_outputs: int | None) -> None:
        """The contract has one lead per input channel, and label names one per output (ValueError)."""
        if len(contract.leads) != n_inputs:
            raise ValueError(f"contract has {len(contract.leads)} leads but the model takes {n_inputs} input channels")
        if label_names is not None and (n_outputs is None or len(label_names) != n_outputs):
            raise ValueError(f"{len(label_names)} label names for {n_outputs} outputs")

    @classmethod
    def from_config(cls, config: dict[str, Any], contract: InputContract | dict | None = None,
                    label_names: Sequence[str] | None = None) -> "EcgModel":
        """Rebuild from a stored config (weights uninitialised), e.g. when loading a native checkpoint."""
        if isinstance(contract, dict):
            contract = InputContract.from_dict(contract)
        return cls(config, contract=contract, label_names=label_names)

    # ------------------------------------------------------------------ family

    def features(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None,
                 layer: int | None = None) -> torch.Tensor:
        """*family*: per-token / per-step features (B, T', D) of the last layer or of ``layer`` (0-based)."""
        raise NotImplementedError

    def feature_dim(self, layer: int | None = None) -> int:
        """*family*: width D of :meth:`features` (checks ``layer``)."""
        raise NotImplementedError

    @property
    def num_layers(self) -> int:
        """*family*: how many layers ``layer`` may name."""
        return len(self.layer_modules())

    def layer_modules(self) -> list[nn.Module]:
        """*family*: the encoder's blocks from input to output (``layer`` i is the output of block i)."""
        raise NotImplementedError

    def input_modules(self) -> list[nn.Module]:
        """*family*: the local feature extractor (conv stem / patch embedding) frozen by ``frozen-features``."""
        return []

    def classifier_config(self, n_labels: int | None) -> dict[str, Any]:
        """*family*: this model's config with a head of ``n_labels`` outputs (None: no head)."""
        raise NotImplementedError

    def finetune_config(self, n_labels: int) -> dict[str, Any]:
        """The config of a classifier finetuned from this model (default: :meth:`classifier_config`)."""
        return self.classifier_config(n_labels)

    def make_classifier(self, n_labels: int) -> nn.Module:
        """A fresh head over the pooled embedding (a family may override)."""
        head = nn.Linear(self.embed_dim, n_labels)
        return head

    def token_grid_shape(self) -> tuple[int, int] | None:
        """``(leads, steps)`` when the tokens of :meth:`features` / :meth:`attention` are per-lead
        patches in lead-major order (token = lead * steps + step); None when they are time steps
        over all leads (the default)."""
        return None

    def prepare(self, x: np.ndarray) -> np.ndarray:
        """Turn (N, L, T) float32 in the contract's layout into what the network takes (default: as is)."""
        return x

    def input_saliency(self, s: np.ndarray, n_leads: int, n_samples: int) -> np.ndarray:
        """Attributions on the prepared input -> (N, L, T) in the contract's layout (default: as is)."""
        return s

    def token_saliency(self, per_token: np.ndarray, n_leads: int, n_samples: int) -> np.ndarray:
        """One value per token of :meth:`attention` (N, T') -> (N, L, T) over the samples each token covers."""
        from ecgtool.signal.resample import stretch

        grid = self.token_grid_shape()
        n = per_token.shape[0]
        if grid is None:
            return np.repeat(stretch(per_token, n_samples)[:, None, :], n_leads, axis=1)
        g_leads, steps = grid
        if g_leads != n_leads:
            raise ValueError(f"{self.family}: attention over {g_leads} leads for an input of {n_leads}")
        return stretch(per_token.reshape(n, g_leads, steps), n_samples)

    # ------------------------------------------------------------------ generic

    @property
    def embed_dim(self) -> int:
        return self.feature_dim()

    def layer_index(self, layer: int | None) -> int | None:
        """``layer`` as 0..num_layers-1 (negative counts from the top); ValueError when out of range."""
        if layer is None:
            return None
        n = self.num_layers
        if not -n <= int(layer) < n:
            raise ValueError(f"layer {layer} out of range for {n} layers of {self.family}")
        return int(layer) % n

    def frame_padding_mask(self, padding_mask: torch.Tensor | None, n_frames: int) -> torch.Tensor | None:
        """A frame mask (B, T') from a sample-level (B, T) or frame-level mask; padding sits at the end."""
        if padding_mask is None:
            return None
        pm = padding_mask.bool()
        if pm.shape[-1] == n_frames:
            return pm
        valid = (~pm).sum(-1).to(torch.float64)
        n_valid = torch.ceil(valid * n_frames / pm.shape[-1])
        return torch.arange(n_frames, device=pm.device)[None, :] >= n_valid[:, None]

    def pool(self, feats: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean over frames, padding frames left out (a family overrides it to pool as its original does)."""
        pm = self.frame_padding_mask(padding_mask, feats.shape[1])
        if pm is None:
            return feats.mean(1)
        keep = (~pm).to(feats.dtype).unsqueeze(-1)
        return (feats * keep).sum(1) / keep.sum(1).clamp_min(1.0)

    def embed(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The pooled embedding (B, D), pooled as the original pools."""
        return self.pool(self.features(x, padding_mask), padding_mask)

    def get_classifier(self) -> nn.Module | None:
        return getattr(self, self.head_name, None) if self.head_name else None

    @property
    def n_classes(self) -> int | None:
        head = self.get_classifier()
        if head is None:
            return None
        out = getattr(head, "out_features", None)
        return int(out) if out is not None else (len(self.label_names) if self.label_names else None)

    def head_input(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """What the classifier reads (default: the pooled embedding)."""
        return self.embed(x, padding_mask)

    def logits(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        head = self.get_classifier()
        if head is None:
            raise NoClassifierError(self)
        return head(self.head_input(x, padding_mask))

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.logits(x, padding_mask) if self.get_classifier() is not None else self.embed(x, padding_mask)

    def attention(self, x: torch.Tensor, layer: int = -1, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Head-averaged attention maps (B, T', T') of ``layer``; only for families with :data:`ATTENTION`."""
        raise NotImplementedError(f"{self.family} has no attention maps")

    def has(self, capability: str) -> bool:
        return capability in self.capabilities

    def reset_classifier(self, label_names: Sequence[str] | int | None) -> None:
        """Replace the head by a fresh one for ``label_names`` (or a count); None removes it."""
        if self.head_name is None:
            if label_names is None:
                return
            raise ValueError(f"{self.family} models have no classifier head")
        if isinstance(label_names, int):
            n, names = int(label_names), None
        elif label_names is None:
            n, names = None, None
        else:
            names = [str(v) for v in label_names]
            n = len(names)
        self.config = self.classifier_config(n)
        ref = next(iter(self.parameters()), None)
        head = self.make_classifier(n) if n else None
        if head is not None and ref is not None:
            head = head.to(device=ref.device, dtype=ref.dtype)
        setattr(self, self.head_name, head)
        self.label_names = names

    def for_labels(self, label_names: Sequence[str], from_scratch: bool = False) -> tuple["EcgModel", list[str]]:
        """A copy with a head for ``label_names`` (finetuning): backbone weights copied, the head kept
        only when its labels are the same. Returns (model, names of tensors that start fresh)."""
        names = [str(v) for v in label_names]
        new = type(self).from_config(self.finetune_config(len(names)), self.contract, names)
        if from_scratch:
            return new, list(new.state_dict())
        head_prefix = f"{self.head_name}." if self.head_name else None
        same_head = list(self.label_names or []) == names
        old, target = self.state_dict(), new.state_dict()
        load, fresh = {}, []
        for key, t in target.items():
            src = old.get(key)
            is_head = head_prefix is not None and key.startswith(head_prefix)
            if src is None or tuple(src.shape) != tuple(t.shape) or (is_head and not same_head):
                fresh.append(key)
            else:
                load[key] = src
        new.load_state_dict(load, strict=False)
        backbone_fresh = [k for k in fresh if head_prefix is None or not k.startswith(head_prefix)]
        if backbone_fresh:
            from ecgtool.errors import CheckpointError

            raise CheckpointError(f"the backbone lacks {len(backbone_fresh)} tensors the classifier needs "
                                  f"({', '.join(backbone_fresh[:5])})")
        new.extra = {"provenance": dict((self.extra or {}).get("provenance") or {})}
        return new, fresh

    def freeze(self, mode: str) -> list[nn.Parameter]:
        """``linear``: only the head trains; ``frozen-features``: the input modules are frozen;
        ``full``: everything trains. Returns the trainable parameters."""
        if mode not in FREEZE_MODES:
            raise ValueError(f"freeze mode {mode!r}: expected one of {', '.join(FREEZE_MODES)}")
        for p in self.parameters():
            p.requires_grad_(mode != "linear")
        if mode == "linear":
            head = self.get_classifier()
            if head is None:
                raise ValueError(f"this {self.family} model has no head to train")
            for p in head.parameters():
                p.requires_grad_(True)
        elif mode == "frozen-features":
            for m in self.input_modules():
                for p in m.parameters():
                    p.requires_grad_(False)
        self.on_freeze(mode)
        return [p for p in self.parameters() if p.requires_grad]

    def on_freeze(self, mode: str) -> None:
        """Hook for a family whose freezing needs more than requires_grad (default: nothing)."""

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``head``, ``upper`` (the top half of the encoder's blocks) and ``lower`` (the rest: input
        modules and lower blocks), for layer-wise learning rates. Every parameter is in exactly one."""
        head = self.get_classifier()
        head_ids = {id(p) for p in head.parameters()} if head is not None else set()
        blocks = self.layer_modules()
        upper_blocks = blocks[len(blocks) // 2:]
        upper_ids = {id(p) for m in upper_blocks for p in m.parameters()} - head_ids
        groups: dict[str, list[nn.Parameter]] = {"head": [], "upper": [], "lower": []}
        for p in self.parameters():
            key = "head" if id(p) in head_ids else "upper" if id(p) in upper_ids else "lower"
            groups[key].append(p)
        return groups


class NoClassifierError(ValueError):
    def __init__(self, model: EcgModel):
        super().__init__(f"this {model.family} model has no classifier head (an encoder only): "
                         "finetune it with 'ecgtool finetune', or use 'ecgtool embed'")


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
