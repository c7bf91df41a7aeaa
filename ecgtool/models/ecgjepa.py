"""ECG-JEPA (Kim 2024): the downstream encoder (``MaskTransformer``) and the importer of its released files.

The arithmetic follows ../shared/reference/ecgjepa.md:

* input (B, L, 2500): L leads (I, II, V1-V6, or a subset of them) of 10 s at
  250 Hz in raw mV;
* every lead is cut into 50 non-overlapping patches of 50 samples, in
  **lead-major** token order (token n = lead*50 + patch), and each patch goes
  through ``W_P`` = Linear(50 -> D) with bias (no conv, no CLS token);
* ``pos_embed`` [8*50, D] (a 2-D sin-cos table, frozen, *stored in the file*
  and loaded from it) is **added before every block**, not once;
* pre-LN blocks: LN -> multi-head attention (fused qkv without bias, split as
  (3, heads, head_dim), logits scaled by head_dim**-0.5, then the CroPA mask:
  a query sees only keys of its own lead or of its own patch index) -> proj;
  LN -> fc1 -> exact GELU -> fc2;
* a final LayerNorm (eps 1e-5) gives the per-token features (B, 400, D); the
  pooled embedding is their plain mean over all tokens (``representation``).

Lead subsets work as the original's ``leads=[...]`` (``restrict_leads``): the
config's ``leads`` are indices into the 8-lead order; the rows of
``pos_embed`` of those leads are used and the CroPA mask is built over them;
the stored table keeps all 8 leads.

The released files (``multiblock_epoch100.pth``, ``random_epoch100.pth``) are
``torch.save({'encoder': state_dict, 'epoch': 99})``. They do not store the
head count (qkv is [3D, D] for any count): the importer takes ``num_heads`` as
an override and assumes the released 16 otherwise (and says so in its report).
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ecgtool.errors import CheckpointError
from ecgtool.models.base import ATTENTION, EcgModel
from ecgtool.models.card import card
from ecgtool.models.contract import InputContract
from ecgtool.models.registry import register_family, register_importer, register_model
from ecgtool.models.serial import match_state_dict, provenance, safe_load

FAMILY = "ecgjepa"

# the model's 8 leads, in its order (indices of the original's ``leads=[...]``)
LEAD_NAMES = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")

# The released configuration (models.load_encoder).
RELEASED_CONFIG: dict[str, Any] = {
    "embed_dim": 768,
    "depth": 12,
    "num_heads": 16,      # not stored in the released file
    "mlp_dim": 3072,      # mlp_ratio 4.0
    "patch_size": 50,     # samples per patch (t); representation() hard-codes 50
    "n_patches": 50,      # patches per lead (p): 2500 samples
    "n_leads": 8,         # leads the positional table covers (c)
    "leads": list(range(8)),
    "qkv_bias": False,
    "norm_eps": 1e-5,
    "n_classes": None,    # the released files have no head; a finetuned one is Linear(D, n) on the mean
}

CONTRACT = card("ecgjepa-base").contract


def normalise_config(config: dict[str, Any]) -> dict[str, Any]:
    """A complete, JSON-serialisable, checked config (defaults from the released one)."""
    unknown = set(config) - set(RELEASED_CONFIG)
    if unknown:
        raise ValueError(f"unknown ECG-JEPA config keys: {', '.join(sorted(unknown))}")
    cfg = {**RELEASED_CONFIG, **config}
    for key in ("embed_dim", "depth", "num_heads", "mlp_dim", "patch_size", "n_patches", "n_leads"):
        cfg[key] = int(cfg[key])
        if cfg[key] <= 0:
            raise ValueError(f"{key} must be positive, not {cfg[key]}")
    cfg["qkv_bias"] = bool(cfg["qkv_bias"])
    cfg["norm_eps"] = float(cfg["norm_eps"])
    cfg["n_classes"] = None if cfg["n_classes"] in (None, 0) else int(cfg["n_classes"])
    cfg["leads"] = lead_indices(cfg["leads"], cfg["n_leads"])
    if cfg["embed_dim"] % cfg["num_heads"]:
        raise ValueError(f"num_heads={cfg['num_heads']} does not divide the width {cfg['embed_dim']}")
    if cfg["embed_dim"] % 4:
        raise ValueError(f"the 2-D sin-cos table needs a width divisible by 4, not {cfg['embed_dim']}")
    return cfg


def lead_indices(leads: Sequence[int | str] | str, n_leads: int = 8) -> list[int]:
    """Indices into the 8-lead order from indices or names (``[0, 1, 7]`` or ``["I", "II", "V6"]``)."""
    from ecgtool.signal.leads import normalize_lead, parse_lead_list

    if isinstance(leads, str):
        leads = parse_lead_list(leads)
    out: list[int] = []
    for v in leads:
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            i = int(v)
        elif isinstance(v, str) and v.strip().lstrip("-").isdigit():
            i = int(v)
        elif isinstance(v, str) and normalize_lead(v) in LEAD_NAMES[:n_leads]:
            i = LEAD_NAMES.index(normalize_lead(v))
        else:
            raise ValueError(f"lead {v!r} is not one of {', '.join(LEAD_NAMES[:n_leads])} (or 0..{n_leads - 1})")
        if not 0 <= i < n_leads:
            raise ValueError(f"lead index {i} out of range 0..{n_leads - 1}")
        out.append(i)
    if not out:
        raise ValueError("leads: at least one lead is needed")
    if len(set(out)) != len(out):
        raise ValueError(f"leads: a lead is named twice ({out})")
    return out


def contract_for(cfg: dict[str, Any]) -> InputContract:
    if cfg["n_leads"] != len(LEAD_NAMES):
        raise ValueError(f"an ECG-JEPA positional table over {cfg['n_leads']} leads: only the 8 leads "
                         f"{', '.join(LEAD_NAMES)} are known")
    return replace(CONTRACT, leads=tuple(LEAD_NAMES[i] for i in cfg["leads"]),
                   n_samples=cfg["n_patches"] * cfg["patch_size"])


def sincos_table(dim: int, n_leads: int = 8, n_patches: int = 50) -> np.ndarray:
    """The 2-D sin-cos table ``get_2d_sincos_pos_embed(dim, n_leads, n_patches)`` (float64 -> float32).

    Row lead*n_patches + j; with K = dim/4 frequencies w_k = 10000**(-k/K), columns
    [sin(j w), cos(j w), sin(lead w), cos(lead w)], each K wide.
    """
    if dim % 4:
        raise ValueError(f"width {dim} is not divisible by 4")
    k = dim // 4
    omega = 1.0 / 10000 ** (np.arange(k, dtype=np.float64) / k)
    lead, patch = np.meshgrid(np.arange(n_leads, dtype=np.float64), np.arange(n_patches, dtype=np.float64),
                              indexing="ij")
    t = np.outer(patch.reshape(-1), omega)
    c = np.outer(lead.reshape(-1), omega)
    return np.concatenate([np.sin(t), np.cos(t), np.sin(c), np.cos(c)], axis=1).astype(np.float32)


def cropa_mask(n_leads: int, n_patches: int = 50, device=None) -> torch.Tensor:
    """(L*P, L*P) bool, True where a query may attend: same lead or same patch index."""
    lead = torch.arange(n_leads, device=device).repeat_interleave(n_patches)
    patch = torch.arange(n_patches, device=device).repeat(n_leads)
    return (lead[:, None] == lead[None, :]) | (patch[:, None] == patch[None, :])


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, need_weights: bool = False):
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, d)
        return self.proj(out), (attn if need_weights else None)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN transformer block (attention under the CroPA mask, then the MLP)."""

    def __init__(self, cfg: dict[str, Any]):
        super().__init__()
        d, eps = cfg["embed_dim"], cfg["norm_eps"]
        self.norm1 = nn.LayerNorm(d, eps=eps)
        self.norm2 = nn.LayerNorm(d, eps=eps)
        self.mlp = Mlp(d, cfg["mlp_dim"])
        self.attn = Attention(d, cfg["num_heads"], cfg["qkv_bias"])

    def forward(self, x: torch.Tensor, mask: torch.Tensor, need_weights: bool = False):
        a, w = self.attn(self.norm1(x), mask, need_weights)
        x = x + a
        x = x + self.mlp(self.norm2(x))
        return x, w


class _Blocks(nn.Module):
    """Holds ``blocks`` so that parameter names are the released ``encoder_blocks.blocks.{i}.…``."""

    def __init__(self, cfg: dict[str, Any]):
        super().__init__()
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg["depth"]))


@register_family
class EcgJepa(EcgModel):
    """The ECG-JEPA encoder behind the model interface.

    ``features`` are per-token (B, L*50, D) in lead-major order (token n =
    lead*50 + patch, each 0.2 s of one lead; :meth:`token_grid` reshapes them to
    (B, L, 50, D)); ``embed`` is their mean over all tokens, as the original's
    ``representation``. ``layer`` i is the residual stream after block i
    (before the final LayerNorm); ``layer=None`` is the final LayerNorm output.
    """

    family = FAMILY
    head_name = "head"
    capabilities = frozenset({ATTENTION})

    def __init__(self, config: dict[str, Any] | None = None, contract: InputContract | None = None,
                 label_names: Sequence[str] | None = None):
        cfg = normalise_config(config or {})
        contract = contract or contract_for(cfg)
        if len(contract.leads) != len(cfg["leads"]):
            raise ValueError(f"contract has {len(contract.leads)} leads but the model takes {len(cfg['leads'])}")
        if label_names is not None and (cfg["n_classes"] is None or len(label_names) != cfg["n_classes"]):
            raise ValueError(f"{len(label_names)} label names for {cfg['n_classes']} outputs")
        super().__init__(cfg, contract, label_names)
        d = cfg["embed_dim"]
        # frozen in the original (requires_grad=False) but a parameter, so it is in the state dict
        self.pos_embed = nn.Parameter(torch.zeros(cfg["n_leads"] * cfg["n_patches"], d), requires_grad=False)
        self.encoder_blocks = _Blocks(cfg)
        self.norm = nn.LayerNorm(d, eps=cfg["norm_eps"])
        self.W_P = nn.Linear(cfg["patch_size"], d)
        self.head = self.make_classifier(cfg["n_classes"]) if cfg["n_classes"] else None
        self.register_buffer("_rows", self._pos_rows(), persistent=False)
        self.register_buffer("_mask", cropa_mask(len(cfg["leads"]), cfg["n_patches"]), persistent=False)
        self._init_weights()

    def _pos_rows(self) -> torch.Tensor:
        p = self.config["n_patches"]
        return torch.tensor([lead * p + j for lead in self.config["leads"] for j in range(p)], dtype=torch.long)

    def _init_weights(self) -> None:
        """The original's init: sin-cos table, trunc-normal(0.02) Linear weights, zero biases,
        LN (1, 0), and proj / fc2 weights of block i (1-based) divided by sqrt(2i)."""
        if self.pos_embed.device.type == "meta":
            return
        with torch.no_grad():
            cfg = self.config
            self.pos_embed.copy_(torch.from_numpy(sincos_table(cfg["embed_dim"], cfg["n_leads"], cfg["n_patches"])))
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.trunc_normal_(m.weight, std=0.02, a=-2.0, b=2.0)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, nn.LayerNorm):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
            for i, blk in enumerate(self.blocks, start=1):
                blk.attn.proj.weight.div_(math.sqrt(2.0 * i))
                blk.mlp.fc2.weight.div_(math.sqrt(2.0 * i))

    @property
    def blocks(self) -> nn.ModuleList:
        return self.encoder_blocks.blocks

    # -- the model interface ---------------------------------------------------

    @property
    def embed_dim(self) -> int:
        return int(self.config["embed_dim"])

    def feature_dim(self, layer: int | None = None) -> int:
        self.layer_index(layer)
        return int(self.config["embed_dim"])

    def layer_modules(self) -> list[nn.Module]:
        return list(self.blocks)

    def input_modules(self) -> list[nn.Module]:
        return [self.W_P]

    def classifier_config(self, n_labels: int | None) -> dict[str, Any]:
        return {**self.config, "n_classes": n_labels}

    def make_classifier(self, n_labels: int) -> nn.Module:
        return nn.Linear(self.embed_dim, n_labels)

    def on_freeze(self, mode: str) -> None:
        self.pos_embed.requires_grad_(False)  # frozen in the original whatever trains

    def features(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None,
                 layer: int | None = None) -> torch.Tensor:
        """Per-token features (B, L*50, D), lead-major: the final LayerNorm output, or (``layer`` i)
        the output of block i before it. ``padding_mask`` is accepted and not used here (the
        network has no notion of padding; :meth:`pool` leaves padded patches out)."""
        i = self.layer_index(layer)
        out, _ = self._run(x, last=i)
        return out if i is not None else self.norm(out)

    def pool(self, feats: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean over all tokens (the original's ``representation``); with a mask, padded patches
        (of every lead) are left out."""
        pm = self.token_padding_mask(padding_mask, feats.shape[1])
        if pm is None:
            return feats.mean(1)
        keep = (~pm).to(feats.dtype).unsqueeze(-1)
        return (feats * keep).sum(1) / keep.sum(1).clamp_min(1.0)

    def attention(self, x: torch.Tensor, layer: int = -1, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Head-averaged attention weights (B, L*50, L*50) of block ``layer`` (lead-major tokens;
        0 where the CroPA mask forbids a pair)."""
        i = self.layer_index(layer)
        _, attn = self._run(x, last=i, attn_layer=i)
        return attn.mean(1)

    # -- ECG-JEPA specifics ----------------------------------------------------

    @property
    def n_samples(self) -> int:
        return int(self.config["n_patches"] * self.config["patch_size"])

    def token_padding_mask(self, padding_mask: torch.Tensor | None, n_tokens: int) -> torch.Tensor | None:
        """A token mask (B, L*P) from a sample mask (B, T) (a patch is padding when any of its samples
        is), a patch mask (B, P), or a token mask."""
        if padding_mask is None:
            return None
        pm = padding_mask.bool()
        p, t = self.config["n_patches"], self.config["patch_size"]
        if pm.shape[-1] == n_tokens:
            return pm
        if pm.shape[-1] == p * t:
            pm = pm.reshape(pm.shape[0], p, t).any(-1)
        if pm.shape[-1] != p:
            raise ValueError(f"padding mask of length {pm.shape[-1]}: expected {p * t} samples, {p} patches "
                             f"or {n_tokens} tokens")
        return pm.repeat(1, n_tokens // p)

    def token_grid_shape(self) -> tuple[int, int]:
        return len(self.config["leads"]), int(self.config["n_patches"])

    def token_grid(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, L*P, D) lead-major tokens -> (B, L, P, D) (lead x 0.2-s patch)."""
        b, n, d = feats.shape
        return feats.reshape(b, len(self.config["leads"]), self.config["n_patches"], d)

    def patch_embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, 2500) -> (B, L*50, D): ``W_P`` over 50-sample patches, lead-major, before pos_embed."""
        if x.ndim != 3 or x.shape[1] != len(self.config["leads"]) or x.shape[2] != self.n_samples:
            raise ValueError(f"ECG-JEPA takes (B, {len(self.config['leads'])}, {self.n_samples}) "
                             f"({', '.join(self.contract.leads)} at {self.contract.fs:g} Hz), not {tuple(x.shape)}")
        b, n_leads, _ = x.shape
        return self.W_P(x.reshape(b, n_leads * self.config["n_patches"], self.config["patch_size"]))

    def _run(self, x: torch.Tensor, last: int | None = None, attn_layer: int | None = None,
             collect: list | None = None):
        h = self.patch_embed(x)
        if collect is not None:
            collect.append(h)
        pos = self.pos_embed[self._rows]
        mask = self._mask
        attn = None
        stop = len(self.blocks) - 1 if last is None else last
        for i, blk in enumerate(self.blocks[: stop + 1]):
            h, w = blk(h + pos, mask, need_weights=(i == attn_layer))
            if w is not None:
                attn = w
            if collect is not None:
                collect.append(h)
        return h, attn

    def forward_intermediates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``patch_embed``, ``block{i}_out`` for each block, ``blocks_out``, ``features``, ``pooled``."""
        outs: list[torch.Tensor] = []
        h, _ = self._run(x, collect=outs)
        d = {"patch_embed": outs[0]}
        for i, o in enumerate(outs[1:]):
            d[f"block{i}_out"] = o
        d["blocks_out"] = h
        d["features"] = self.norm(h)
        d["pooled"] = d["features"].mean(1)
        return d


# ----------------------------------------------------------------------------
# registered variants


def _variant(base: dict[str, Any], overrides: dict[str, Any]) -> EcgJepa:
    overrides = dict(overrides)
    contract = overrides.pop("contract", None)
    labels = overrides.pop("label_names", None)
    if labels is not None and "n_classes" not in overrides:
        overrides["n_classes"] = len(labels)
    cfg = normalise_config({**base, **overrides})
    return EcgJepa(cfg, contract=contract, label_names=labels)


@register_model("ecgjepa-base")
def ecgjepa_base(**overrides) -> EcgJepa:
    return _variant(RELEASED_CONFIG, overrides)


TINY_CONFIG = {**RELEASED_CONFIG, **card("ecgjepa-tiny").config}


@register_model("ecgjepa-tiny")
def ecgjepa_tiny(**overrides) -> EcgJepa:
    return _variant(TINY_CONFIG, overrides)


# ----------------------------------------------------------------------------
# the released .pth files

IMPORTER = "ecgjepa-pth"
OVERRIDES = ("num_heads", "leads")
BLOCK_KEY = re.compile(r"^encoder_blocks\.blocks\.(\d+)\.")
N_SAMPLES = 2500  # representation() takes exactly 2500 samples (10 s at 250 Hz)


def extract_state_dict(obj: Any, source: str) -> tuple[dict[str, torch.Tensor], dict, list[str]]:
    """(encoder state dict, plain top-level values, names of other top-level entries) of a released file
    (``{'encoder': …, 'epoch': …}``) or of a bare encoder state dict."""
    top: dict = {}
    others: list[str] = []
    if isinstance(obj, dict) and isinstance(obj.get("encoder"), dict):
        sd = obj["encoder"]
        for key, value in obj.items():
            if key == "encoder":
                continue
            value = value.item() if hasattr(value, "item") and getattr(value, "ndim", 1) == 0 else value
            if isinstance(value, (int, float, str)) and not isinstance(value, bool):
                top[str(key)] = value
            else:
                others.append(str(key))
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd = obj
    else:
        raise CheckpointError(f"{source}: no ECG-JEPA encoder state_dict inside (top-level "
                              f"{type(obj).__name__}{' keys ' + ', '.join(map(str, list(obj)[:8])) if isinstance(obj, dict) else ''})",
                              "the released files hold {'encoder': state_dict, 'epoch': 99}")
    bad = [str(k) for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{source}: encoder entries that are not tensors: {', '.join(bad[:10])}")
    if sd and all(str(k).startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return {str(k): v for k, v in sd.items()}, top, others


def infer_config(sd: dict[str, torch.Tensor], source: str = "checkpoint") -> dict[str, Any]:
    """Everything but the head count, from tensor shapes."""
    w = sd.get("W_P.weight")
    pos = sd.get("pos_embed")
    if w is None or w.ndim != 2 or pos is None or pos.ndim != 2:
        raise CheckpointError(f"{source}: no W_P.weight (D, 50) and pos_embed (400, D): "
                              "not an ECG-JEPA encoder state dict")
    d, t = (int(v) for v in w.shape)
    if N_SAMPLES % t:
        raise CheckpointError(f"{source}: patch length {t} (W_P.weight {tuple(w.shape)}) does not divide "
                              f"the {N_SAMPLES} input samples")
    p = N_SAMPLES // t
    rows = int(pos.shape[0])
    if rows % p or int(pos.shape[1]) != d:
        raise CheckpointError(f"{source}: pos_embed {tuple(pos.shape)} is not (leads x {p} patches, {d})")
    c = rows // p
    if c != len(LEAD_NAMES):
        raise CheckpointError(f"{source}: pos_embed covers {c} leads; ECG-JEPA's table covers the 8 leads "
                              f"{', '.join(LEAD_NAMES)}")
    ids = sorted({int(m.group(1)) for k in sd for m in [BLOCK_KEY.match(k)] if m})
    if not ids or ids != list(range(len(ids))):
        raise CheckpointError(f"{source}: block indices {ids} are not 0..N-1")
    fc1 = sd.get("encoder_blocks.blocks.0.mlp.fc1.weight")
    if fc1 is None or fc1.ndim != 2:
        raise CheckpointError(f"{source}: missing encoder_blocks.blocks.0.mlp.fc1.weight")
    return {"embed_dim": d, "depth": len(ids), "mlp_dim": int(fc1.shape[0]), "patch_size": t, "n_patches": p,
            "n_leads": c, "qkv_bias": "encoder_blocks.blocks.0.attn.qkv.bias" in sd}


def _sniff(info) -> bool:
    return info.kind == "torch" and info.has_key_prefix("encoder_blocks.blocks.", "module.encoder_blocks.blocks.") \
        and any(s in info.strings for s in ("W_P.weight", "module.W_P.weight"))


@register_importer(IMPORTER, _sniff, "ECG-JEPA .pth (multiblock_epoch100.pth, random_epoch100.pth)")
def import_ecgjepa(path, **overrides) -> tuple[EcgJepa, list[str]]:
    """Load a released ECG-JEPA ``.pth`` (or a bare encoder state dict) into an :class:`EcgJepa`.

    Overrides: ``num_heads`` (not stored in the file; default 16, the released
    value) and ``leads`` (a lead subset, indices into I, II, V1-V6 or names, as
    the original's ``load_encoder(..., leads=[...])``).
    """
    path = Path(path)
    source = str(path)
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise CheckpointError(f"{source}: ECG-JEPA files take only {', '.join(OVERRIDES)} as overrides, "
                              f"not {', '.join(unknown)}", "the rest of the architecture is read from the file")
    sd, top, others = extract_state_dict(safe_load(path), source)
    cfg = infer_config(sd, source)
    heads_given = overrides.get("num_heads") is not None
    heads = overrides.get("num_heads") if heads_given else RELEASED_CONFIG["num_heads"]
    try:
        heads = int(heads)
    except (TypeError, ValueError):
        raise CheckpointError(f"{source}: num_heads={heads!r} is not a whole number") from None
    if heads <= 0 or cfg["embed_dim"] % heads:
        raise CheckpointError(
            f"{source}: num_heads={heads}{'' if heads_given else ' (the released value, assumed)'} does not "
            f"divide the width {cfg['embed_dim']}",
            "the file does not store the head count; pass the one it was trained with, e.g. num_heads=4")
    cfg["num_heads"] = heads
    if overrides.get("leads") is not None:
        try:
            cfg["leads"] = lead_indices(overrides["leads"], cfg["n_leads"])
        except ValueError as exc:
            raise CheckpointError(f"{source}: leads: {exc}") from None
    cfg = normalise_config(cfg)
    model = EcgJepa(cfg)
    match_state_dict(model.state_dict(), sd, source)
    model.load_state_dict({k: v.to(torch.float32) for k, v in sd.items()}, strict=True)
    model.eval()
    model.extra["provenance"] = provenance(path, IMPORTER, num_heads=heads,
                                           num_heads_assumed=not heads_given, **top)
    n_params = sum(p.numel() for p in model.parameters())
    lines = [f"read {source} (ECG-JEPA encoder, sha256 {model.extra['provenance']['sha256']})"]
    if top:
        lines.append("  " + ", ".join(f"{k}={v}" for k, v in top.items()))
    if others:
        lines.append(f"  top-level entries not read (not the encoder): {', '.join(others)}")
    lines.append(f"  MaskTransformer: width {cfg['embed_dim']}, {cfg['depth']} blocks, MLP {cfg['mlp_dim']}, "
                 f"{cfg['n_leads']} leads x {cfg['n_patches']} patches of {cfg['patch_size']} samples, "
                 f"qkv bias {'yes' if cfg['qkv_bias'] else 'no'}, CroPA mask")
    if heads_given:
        lines.append(f"  num_heads={heads} (given; the file does not store it)")
    else:
        lines.append(f"  num_heads={heads} assumed (the released value; the file does not store it: "
                     "pass num_heads=N if this file was trained with another)")
    if cfg["leads"] != list(range(cfg["n_leads"])):
        lines.append(f"  lead subset {', '.join(LEAD_NAMES[i] for i in cfg['leads'])} "
                     f"(indices {cfg['leads']}; their pos_embed rows and CroPA mask)")
    lines.append(f"  {len(sd)} tensors loaded ({n_params:,} parameters, of which pos_embed "
                 f"{model.pos_embed.numel():,}, frozen, read from the file)")
    return model, lines
