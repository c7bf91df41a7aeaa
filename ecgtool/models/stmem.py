"""ST-MEM (Na et al., ICLR 2024): a ViT over per-lead patches with lead and SEP embeddings, and the
importer of its released files.

The arithmetic follows ../shared/reference/stmem.md (``ST_MEM_ViT.forward_encoding`` of vuno/ST-MEM):

* each of the C leads is cut on its own into n = L / 75 patches of 75 samples;
  ``to_patch_embedding`` = LayerNorm(75) -> Linear(75, W) -> LayerNorm(W) (index 0 is the reshape);
* patch j of every lead gets ``pos_embedding`` row j + 1; each lead gets a left SEP token
  (``sep_embedding`` + row 0) and a right SEP token (``sep_embedding`` + the **last** row, N + 1,
  whatever n is: a short input still uses row N + 1, not row n + 1);
* ``lead_embeddings[c]`` is added to the n + 2 tokens of lead c (SEP included); the tokens are
  flattened lead-major, C * (n + 2) of them, token c * (n + 2) + j;
* pre-LN blocks ``block0`` ... over all tokens of all leads (no mask): fused ``to_qkv`` split q, k, v,
  heads of ``dim_head`` = 64 features each, scale ``dim_head ** -0.5`` (the head size is fixed at 64 by
  the original code, so the inner attention width is ``heads * 64``, not the model width), exact GELU;
* the SEP tokens are dropped; the per-token features are the last block's output without LayerNorm,
  (B, C, n, W) in the original. ecgtool's :meth:`StMem.features` gives them time-major, (B, n * C, W)
  with token j * C + c = patch j of lead c, so that per-frame outputs (``embed --local``, attention
  saliency stretched over the samples) follow time; the ecg-fm-benchmarking wrapper flattens them
  lead-major instead (``forward_intermediates()['features']`` keeps the (B, C, n, W) layout);
* the embedding is ``norm`` (LayerNorm) of the mean over leads and patches; ``head`` is a Linear on it.

Parameter names match the released ones, so a released encoder state dict loads as is.

The released files are ``torch.save`` pickles written by ``util/misc.py:save_model``:
``{'epoch', 'model', 'optimizer', 'scaler', 'config'}`` (a finetuned one adds ``'metrics'``). Three
layouts of ``model`` are read by :func:`import_stmem`:

* **encoder** (``encoder.pth``, ``st_mem_vit_base_encoder.pth``): the ``ST_MEM_ViT`` keys, no head;
* **full** pretraining (``checkpoint-*.pth``, ``st_mem_vit_base_full.pth``): ``encoder.*`` plus the
  masked-autoencoder decoder and 6 aliases ``to_patch_embedding.*`` (the same tensors as
  ``encoder.to_patch_embedding.*``). The encoder is kept; the decoder tensors are checked against the
  decoder's structure and left out, and the aliases must equal the encoder's;
* **finetuned** (``best-*.pth`` of ``main_downstream.py``): the encoder keys plus ``head.*``.

The architecture is read from tensor shapes; only the number of heads (with the head size) is not in the
shapes: it comes from ``config['model']`` (``heads`` / ``num_heads`` / ``dim_head``), else from the
original preset named by ``config['model_name']`` (``st_mem_vit_base*``: 12, ``st_mem_vit_small*``: 6),
else from the fixed head size 64. ``heads=`` / ``dim_head=`` overrides set it.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ecgtool.errors import CheckpointError, UsageError
from ecgtool.models.base import ATTENTION, EcgModel
from ecgtool.models.card import card
from ecgtool.models.contract import InputContract
from ecgtool.models.registry import register_family, register_importer, register_model
from ecgtool.models.serial import match_state_dict, provenance, safe_load

FAMILY = "stmem"
LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")

# st_mem_vit_base(num_leads=12, seq_len=2250, patch_size=75), no head; names as the original's arguments
RELEASED_CONFIG: dict[str, Any] = {
    "num_leads": 12,
    "seq_len": 2250,
    "patch_size": 75,
    "width": 768,
    "depth": 12,
    "heads": 12,
    "dim_head": 64,
    "mlp_dim": 3072,
    "qkv_bias": True,
    "num_classes": None,
    "drop_out_rate": 0.0,
    "attn_drop_out_rate": 0.0,
    "drop_path_rate": 0.0,
}

CONTRACT = card("stmem-base").contract


def normalise_config(config: dict[str, Any]) -> dict[str, Any]:
    """A complete, JSON-serialisable config (defaults from the released one), checked."""
    unknown = set(config) - set(RELEASED_CONFIG)
    if unknown:
        raise ValueError(f"unknown ST-MEM config keys: {', '.join(sorted(unknown))}")
    cfg = {**RELEASED_CONFIG, **config}
    for key in ("num_leads", "seq_len", "patch_size", "width", "depth", "heads", "dim_head", "mlp_dim"):
        cfg[key] = int(cfg[key])
        if cfg[key] <= 0:
            raise ValueError(f"ST-MEM {key} must be positive, not {cfg[key]}")
    for key in ("drop_out_rate", "attn_drop_out_rate", "drop_path_rate"):
        cfg[key] = float(cfg[key])
    cfg["qkv_bias"] = bool(cfg["qkv_bias"])
    cfg["num_classes"] = None if cfg["num_classes"] in (None, 0) else int(cfg["num_classes"])
    if cfg["seq_len"] % cfg["patch_size"]:
        raise ValueError(f"seq_len {cfg['seq_len']} is not a multiple of patch_size {cfg['patch_size']}")
    return cfg


def contract_for(cfg: dict[str, Any]) -> InputContract:
    """The released contract, adapted to a config with other leads (the first C, as the original) or length."""
    if cfg["num_leads"] == 12 and cfg["seq_len"] == CONTRACT.n_samples:
        return CONTRACT
    leads = LEADS[: cfg["num_leads"]] if cfg["num_leads"] <= 12 else tuple(f"ch{i}" for i in range(cfg["num_leads"]))
    return replace(CONTRACT, leads=tuple(leads), n_samples=cfg["seq_len"], preset=None)


# ----------------------------------------------------------------------------
# modules (names as in the original, so state dicts load as is)


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class Patchify(nn.Module):
    """(B, C, L) -> (B, C, n, patch): non-overlapping patches of each lead (no parameters)."""

    def __init__(self, patch_size: int):
        super().__init__()
        self.patch_size = patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, length = x.shape
        if length % self.patch_size:
            raise ValueError(f"ST-MEM takes a multiple of {self.patch_size} samples per lead, not {length}")
        return x.reshape(b, c, length // self.patch_size, self.patch_size)


class PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor, **kw) -> torch.Tensor:
        return self.fn(self.norm(x), **kw)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection and a head size of ``dim_head``."""

    def __init__(self, dim: int, heads: int, dim_head: int, qkv_bias: bool, drop: float, attn_drop: float):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.dim_head = dim_head
        self.scale = dim_head ** -0.5
        self.to_qkv = nn.Linear(dim, inner * 3, bias=qkv_bias)
        self.dropout = nn.Dropout(attn_drop)
        if heads == 1 and dim_head == dim:
            self.to_out = nn.Identity()
        else:
            self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(drop))

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        b, t, _ = x.shape
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, self.dim_head).transpose(1, 2) for z in (q, k, v))
        attn = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * self.scale, dim=-1)
        out = torch.matmul(self.dropout(attn), v)
        out = self.to_out(out.transpose(1, 2).reshape(b, t, self.heads * self.dim_head))
        return (out, attn) if return_attention else out


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(drop),
                                 nn.Linear(hidden, dim), nn.Dropout(drop))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """x + DropPath(Attn(LN(x))), then x + DropPath(FF(LN(x)))."""

    def __init__(self, dim: int, heads: int, dim_head: int, mlp_dim: int, qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path_rate: float = 0.0):
        super().__init__()
        self.attn = PreNorm(dim, Attention(dim, heads, dim_head, qkv_bias, drop, attn_drop))
        self.ff = PreNorm(dim, FeedForward(dim, mlp_dim, drop))
        self.drop_path_rate = drop_path_rate

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        if return_attention:
            a, attn = self.attn(x, return_attention=True)
        else:
            a, attn = self.attn(x), None
        x = x + drop_path(a, self.drop_path_rate, self.training)
        x = x + drop_path(self.ff(x), self.drop_path_rate, self.training)
        return (x, attn) if return_attention else x


@register_family
class StMem(EcgModel):
    """ST-MEM's ``ST_MEM_ViT`` behind the model interface.

    ``features`` are (B, n * C, W): the non-SEP tokens of a block's output, time-major (token
    j * C + c is patch j of lead c; the network's own token order is lead-major, with SEP tokens).
    ``pool`` is the original's: LayerNorm(mean over all of them). ``padding_mask`` (samples (B, L) or
    tokens (B, n * C), True = padding) only leaves padded patches out of the mean; attention is over
    every token, as in the original, which has no mask.
    """

    family = FAMILY
    head_name = "head"
    capabilities = frozenset({ATTENTION})

    def __init__(self, config: dict[str, Any] | None = None, contract: InputContract | None = None,
                 label_names: list[str] | None = None):
        cfg = normalise_config(config or {})
        contract = contract or contract_for(cfg)
        if len(contract.leads) != cfg["num_leads"]:
            raise ValueError(f"contract has {len(contract.leads)} leads but the model has "
                             f"{cfg['num_leads']} lead embeddings")
        if label_names is not None and (cfg["num_classes"] is None or len(label_names) != cfg["num_classes"]):
            raise ValueError(f"{len(label_names)} label names for {cfg['num_classes']} outputs")
        super().__init__(cfg, contract, label_names)
        w, p = cfg["width"], cfg["patch_size"]
        self.n_patches = cfg["seq_len"] // p
        self.to_patch_embedding = nn.Sequential(Patchify(p), nn.LayerNorm(p), nn.Linear(p, w), nn.LayerNorm(w))
        self.pos_embedding = nn.Parameter(torch.zeros(1, self.n_patches + 2, w))
        self.sep_embedding = nn.Parameter(torch.zeros(w))
        self.lead_embeddings = nn.ParameterList(nn.Parameter(torch.zeros(w)) for _ in range(cfg["num_leads"]))
        self.dropout = nn.Dropout(cfg["drop_out_rate"])
        for i in range(cfg["depth"]):
            rate = cfg["drop_path_rate"] * i / max(cfg["depth"] - 1, 1)  # linspace(0, rate, depth), as the original
            self.add_module(f"block{i}", TransformerBlock(w, cfg["heads"], cfg["dim_head"], cfg["mlp_dim"],
                                                          cfg["qkv_bias"], cfg["drop_out_rate"],
                                                          cfg["attn_drop_out_rate"], rate))
        self.norm = nn.LayerNorm(w)
        self.head = self.make_classifier(cfg["num_classes"]) if cfg["num_classes"] else None
        self._init_weights()

    def _init_weights(self) -> None:
        """As ST_MEM.initialize_weights: Xavier-uniform Linears with zero bias, N(0, 0.02) embeddings."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for prm in (self.pos_embedding, self.sep_embedding, *self.lead_embeddings):
            if prm.device.type != "meta":
                nn.init.normal_(prm, std=0.02)

    # -- the model interface ---------------------------------------------------

    @property
    def embed_dim(self) -> int:
        return int(self.config["width"])

    @property
    def blocks(self) -> list[nn.Module]:
        return [getattr(self, f"block{i}") for i in range(self.config["depth"])]

    def layer_modules(self) -> list[nn.Module]:
        return self.blocks

    def input_modules(self) -> list[nn.Module]:
        return [self.to_patch_embedding]

    def classifier_config(self, n_labels: int | None) -> dict[str, Any]:
        return {**self.config, "num_classes": n_labels}

    def make_classifier(self, n_labels: int) -> nn.Module:
        return nn.Linear(self.embed_dim, n_labels)

    def feature_dim(self, layer: int | None = None) -> int:
        self.layer_index(layer)
        return self.embed_dim

    def token_saliency(self, per_token: np.ndarray, n_leads: int, n_samples: int) -> np.ndarray:
        """Tokens are time-major (patch j of lead c = token j * leads + c): one trace per lead."""
        from ecgtool.signal.resample import stretch

        n = per_token.shape[0]
        grid = per_token.reshape(n, -1, n_leads).transpose(0, 2, 1)
        return stretch(np.ascontiguousarray(grid), n_samples)

    def features(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None,
                 layer: int | None = None) -> torch.Tensor:
        """Output of the last block, or of block ``layer``, without the SEP tokens: (B, n * C, W) time-major."""
        i = self.layer_index(layer)
        tokens, n = self.tokens_in(x)
        for block in self.blocks[: self.config["depth"] if i is None else i + 1]:
            tokens = block(tokens)
        return self.time_major(self.drop_sep(tokens, n))

    def pool(self, feats: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The original's embedding: LayerNorm of the mean over leads and patches (padded patches left out)."""
        keep = self.token_keep(padding_mask, feats.shape[1])
        if keep is None:
            mean = feats.mean(1)
        else:
            w = keep.to(feats.dtype).unsqueeze(-1)
            mean = (feats * w).sum(1) / w.sum(1).clamp_min(1.0)
        return self.norm(mean)

    def attention(self, x: torch.Tensor, layer: int = -1, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Head-averaged attention of block ``layer`` between the non-SEP tokens: (B, n * C, n * C), in the
        order of :meth:`features` (rows are not renormalised after the SEP keys are left out)."""
        i = self.layer_index(layer)
        tokens, n = self.tokens_in(x)
        for block in self.blocks[:i]:
            tokens = block(tokens)
        _, attn = self.blocks[i](tokens, return_attention=True)
        attn = attn.mean(1)
        idx = self._feature_tokens(n, attn.device)
        return attn[:, idx][:, :, idx]

    # -- ST-MEM specifics ------------------------------------------------------

    def token_keep(self, padding_mask: torch.Tensor | None, n_tokens: int) -> torch.Tensor | None:
        """(B, n * C) True at tokens to pool, from a sample mask (B, n * patch) or a token mask (B, n * C)."""
        if padding_mask is None:
            return None
        pm = padding_mask.bool()
        c, p = self.config["num_leads"], self.config["patch_size"]
        if pm.shape[-1] == n_tokens:
            return ~pm
        n = n_tokens // c
        if pm.shape[-1] != n * p:
            raise ValueError(f"padding mask of length {pm.shape[-1]} fits neither {n_tokens} tokens nor "
                             f"{n * p} samples")
        valid = ~pm.reshape(pm.shape[0], n, p).all(-1)  # a patch with any real sample is kept
        return valid.repeat_interleave(c, dim=1)

    def _feature_tokens(self, n: int, device) -> torch.Tensor:
        """Index into the network's tokens (lead-major, SEP included) of each feature token (time-major)."""
        c = self.config["num_leads"]
        j = torch.arange(n, device=device)[:, None]
        lead = torch.arange(c, device=device)[None, :]
        return (lead * (n + 2) + j + 1).reshape(-1)

    def patch_embed(self, x: torch.Tensor) -> torch.Tensor:
        """``to_patch_embedding`` of (B, C, L): (B, C, n, W)."""
        c = self.config["num_leads"]
        if x.ndim != 3 or x.shape[1] != c:
            raise ValueError(f"ST-MEM takes (batch, {c} leads, samples), not {tuple(x.shape)}")
        return self.to_patch_embedding(x)

    def tokens_in(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The input of ``block0``, (B, C * (n + 2), W) lead-major, and n."""
        x = self.patch_embed(x)
        b, c, n, w = x.shape
        if n > self.n_patches + 1:  # rows 1..n of pos_embedding must exist (n = N + 1 runs, as the original)
            raise ValueError(f"ST-MEM takes at most {(self.n_patches + 1) * self.config['patch_size']} samples "
                             f"per lead ({self.config['seq_len']} as trained), not {n * self.config['patch_size']}")
        pos = self.pos_embedding
        x = x + pos[:, 1:n + 1, :].unsqueeze(1)
        sep = self.sep_embedding[None, None, None, :]
        left = sep.expand(b, c, -1, -1) + pos[:, :1, :].unsqueeze(1)
        right = sep.expand(b, c, -1, -1) + pos[:, -1:, :].unsqueeze(1)
        x = torch.cat([left, x, right], dim=2)
        x = x + torch.stack(list(self.lead_embeddings))[None, :, None, :]
        return self.dropout(x.reshape(b, c * (n + 2), w)), n

    def drop_sep(self, tokens: torch.Tensor, n: int) -> torch.Tensor:
        """Network tokens (B, C * (n + 2), W) -> the original's features (B, C, n, W), SEP dropped."""
        b, _, w = tokens.shape
        return tokens.reshape(b, self.config["num_leads"], n + 2, w)[:, :, 1:-1]

    @staticmethod
    def time_major(feats: torch.Tensor) -> torch.Tensor:
        """(B, C, n, W) -> (B, n * C, W), token j * C + c = patch j of lead c."""
        b, c, n, w = feats.shape
        return feats.transpose(1, 2).reshape(b, n * c, w)

    def forward_intermediates(self, x: torch.Tensor) -> dict[str, Any]:
        """``patch_embed`` (B, C, n, W), ``tokens_in`` (input of block0), ``blocks`` (each block's output,
        SEP included), ``features`` (B, C, n, W) and ``pooled`` (B, W)."""
        out: dict[str, Any] = {"patch_embed": self.patch_embed(x)}
        tokens, n = self.tokens_in(x)
        out["tokens_in"] = tokens
        outs = []
        for block in self.blocks:
            tokens = block(tokens)
            outs.append(tokens)
        out["blocks"] = outs
        out["features"] = self.drop_sep(tokens, n)
        out["pooled"] = self.pool(self.time_major(out["features"]))
        return out

    def pretraining_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``ST_MEM.forward_encoder(x, mask_ratio=0)[0]``: ``norm`` applied to every token, SEP included."""
        tokens, _ = self.tokens_in(x)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)


# ----------------------------------------------------------------------------
# registered variants


def _variant(base: dict[str, Any], overrides: dict[str, Any]) -> StMem:
    overrides = dict(overrides)
    contract = overrides.pop("contract", None)
    labels = overrides.pop("label_names", None)
    cfg = normalise_config({**base, **overrides})
    return StMem(cfg, contract=contract, label_names=labels)


@register_model("stmem-base")
def stmem_base(**overrides) -> StMem:
    return _variant(RELEASED_CONFIG, overrides)


SMALL_CONFIG = {**RELEASED_CONFIG, "width": 384, "heads": 6, "mlp_dim": 1536}
TINY_CONFIG = {**RELEASED_CONFIG, "width": 64, "depth": 2, "heads": 2, "mlp_dim": 128}


@register_model("stmem-small")
def stmem_small(**overrides) -> StMem:
    return _variant(SMALL_CONFIG, overrides)


@register_model("stmem-tiny")
def stmem_tiny(**overrides) -> StMem:
    return _variant(TINY_CONFIG, overrides)


# ----------------------------------------------------------------------------
# the released .pth files

IMPORTER = "stmem-pth"
OVERRIDES = ("heads", "dim_head")
PRESET_HEADS = (("st_mem_vit_base", 12), ("st_mem_vit_small", 6))  # the original's model presets
HEAD_SIZE = 64  # dim_head of every ST-MEM preset (ST_MEM never passes it on)

BLOCK_KEY = re.compile(r"^block(\d+)\.")
LEAD_KEY = re.compile(r"^lead_embeddings\.(\d+)$")
DECODER_BLOCK_KEY = re.compile(r"^decoder_blocks\.(\d+)\.")
DECODER_KEYS = ("mask_embedding", "decoder_pos_embed", "to_decoder_embedding.", "decoder_blocks.",
                "decoder_norm.", "decoder_head.")


def _plain(value: Any) -> Any:
    """A JSON-able copy of a config value (dicts, lists, scalars); other objects as text."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def extract_state_dict(obj: Any, source: str) -> tuple[dict[str, torch.Tensor], dict]:
    """``checkpoint['model']`` (or a bare state dict) without a ``module.`` prefix, and the file's top level."""
    top: dict = {}
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        sd = obj["model"]
        for key in ("epoch",):
            if isinstance(obj.get(key), int):
                top[key] = obj[key]
        if isinstance(obj.get("config"), dict):
            top["config"] = obj["config"]
        if isinstance(obj.get("metrics"), dict):
            top["metrics"] = {str(k): float(v) for k, v in obj["metrics"].items() if isinstance(v, (int, float))}
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd = obj
    else:
        keys = ", ".join(map(str, list(obj)[:8])) if isinstance(obj, dict) else ""
        raise CheckpointError(f"{source}: no ST-MEM state dict inside (top level {type(obj).__name__}"
                              f"{' with keys ' + keys if keys else ''})",
                              "expected a dict with 'model' as written by ST-MEM's util/misc.py:save_model")
    bad = [str(k) for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{source}: model entries that are not tensors: {', '.join(bad[:10])}")
    if sd and all(str(k).startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return {str(k): v for k, v in sd.items()}, top


def _need(sd: dict[str, torch.Tensor], key: str, ndim: int, source: str) -> torch.Size:
    t = sd.get(key)
    if t is None:
        raise CheckpointError(f"{source}: missing {key}, which gives the architecture: not an ST-MEM checkpoint "
                              "or a damaged one")
    if t.ndim != ndim:
        raise CheckpointError(f"{source}: {key} has shape {tuple(t.shape)}, expected {ndim} dimensions")
    return t.shape


def _indices(keys, pattern: re.Pattern, what: str, source: str) -> int:
    ids = sorted({int(m.group(1)) for k in keys if (m := pattern.match(k))})
    if ids != list(range(len(ids))):
        raise CheckpointError(f"{source}: {what} indices {ids} are not 0..N-1")
    return len(ids)


def _heads(inner: int, file_cfg: dict, overrides: dict, source: str) -> tuple[int, int, str]:
    """(heads, dim_head, where the heads came from) for an inner attention width, as the original builds it:
    ``dim_head`` is 64 unless given (ST_MEM never passes it), ``heads`` is given (override, the file's
    config, or the preset its ``model_name`` names) or else inner / dim_head."""
    model_cfg = file_cfg.get("model") if isinstance(file_cfg.get("model"), dict) else {}
    heads, dim_head, where = overrides.get("heads"), overrides.get("dim_head"), "overrides"
    if heads is None and dim_head is None:
        heads = model_cfg.get("heads", model_cfg.get("num_heads"))
        dim_head = model_cfg.get("dim_head")
        where = "the file's config"
    if heads is None and dim_head is None:
        name = str(file_cfg.get("model_name") or "")
        heads = next((h for prefix, h in PRESET_HEADS if name.startswith(prefix)), None)
        where = f"the preset {name}"
    if dim_head is None:
        dim_head = HEAD_SIZE
    if heads is None:
        heads = inner // int(dim_head) if int(dim_head) > 0 and inner % int(dim_head) == 0 else None
        where = f"ST-MEM's fixed head size {HEAD_SIZE}" if where != "overrides" else where
    if heads is None or int(heads) * int(dim_head) != inner:
        raise CheckpointError(f"{source}: heads {heads} x head size {dim_head} (from {where}) do not make the "
                              f"attention width {inner} of to_qkv",
                              "give heads= (and dim_head=) that multiply to it")
    return int(heads), int(dim_head), str(where)


def infer_config(sd: dict[str, torch.Tensor], file_cfg: dict, overrides: dict, source: str) -> tuple[dict, str]:
    """ST_MEM_ViT architecture from tensor shapes (heads from config / preset / overrides)."""
    rows, width = _need(sd, "pos_embedding", 3, source)[1:]
    patch = _need(sd, "to_patch_embedding.1.weight", 1, source)[0]
    n_leads = _indices(sd, LEAD_KEY, "lead_embeddings", source)
    depth = _indices(sd, BLOCK_KEY, "block", source)
    if not n_leads or not depth:
        raise CheckpointError(f"{source}: no lead_embeddings.* or block*.: not an ST-MEM encoder")
    qkv = _need(sd, "block0.attn.fn.to_qkv.weight", 2, source)[0]
    mlp = _need(sd, "block0.ff.fn.net.0.weight", 2, source)[0]
    if qkv % 3:
        raise CheckpointError(f"{source}: block0.attn.fn.to_qkv.weight has {qkv} rows, not 3 x the attention width")
    if rows < 3:
        raise CheckpointError(f"{source}: pos_embedding has {rows} rows; ST-MEM has patches + 2 SEP rows")
    heads, dim_head, where = _heads(qkv // 3, file_cfg, overrides, source)
    head = sd.get("head.weight")
    cfg = {
        "num_leads": n_leads, "seq_len": (int(rows) - 2) * int(patch), "patch_size": int(patch),
        "width": int(width), "depth": depth, "heads": heads, "dim_head": dim_head, "mlp_dim": int(mlp),
        "qkv_bias": "block0.attn.fn.to_qkv.bias" in sd,
        "num_classes": int(head.shape[0]) if head is not None and head.ndim == 2 else None,
    }
    return normalise_config(cfg), where


def decoder_shapes(sd: dict[str, torch.Tensor], width: int, rows: int, patch: int, source: str) -> dict:
    """The shapes the ST_MEM decoder of the file's dims has (checked, then left out)."""
    dim = int(_need(sd, "to_decoder_embedding.weight", 2, source)[0])
    depth = _indices(sd, DECODER_BLOCK_KEY, "decoder_blocks", source)
    shapes: dict[str, tuple] = {
        "mask_embedding": (1, 1, dim), "decoder_pos_embed": (1, rows, dim),
        "to_decoder_embedding.weight": (dim, width), "to_decoder_embedding.bias": (dim,),
        "decoder_norm.weight": (dim,), "decoder_norm.bias": (dim,),
        "decoder_head.weight": (patch, dim), "decoder_head.bias": (patch,),
    }
    if depth:
        inner = int(_need(sd, "decoder_blocks.0.attn.fn.to_qkv.weight", 2, source)[0]) // 3
        mlp = int(_need(sd, "decoder_blocks.0.ff.fn.net.0.weight", 2, source)[0])
        bias = "decoder_blocks.0.attn.fn.to_qkv.bias" in sd
        block = _block_with_out(dim, inner, mlp, bias)
        for i in range(depth):
            for k, v in block.state_dict().items():
                shapes[f"decoder_blocks.{i}.{k}"] = tuple(v.shape)
    return shapes


def _block_with_out(dim: int, inner: int, mlp: int, bias: bool) -> nn.Module:
    """A decoder block's tensors (on the meta device): to_out is kept, as in every ST-MEM preset."""
    with torch.device("meta"):
        block = TransformerBlock(dim, 1, inner, mlp, bias)
        if isinstance(block.attn.fn.to_out, nn.Identity):
            block.attn.fn.to_out = nn.Sequential(nn.Linear(inner, dim))
    return block


def detect_layout(sd: dict[str, torch.Tensor]) -> str:
    if any(k.startswith("encoder.") for k in sd):
        return "full"
    return "finetuned" if any(k.startswith("head.") for k in sd) else "encoder"


def _sniff(info) -> bool:
    if info.kind != "torch":
        return False
    return (info.has_key_prefix("sep_embedding", "encoder.sep_embedding", "module.sep_embedding",
                                "module.encoder.sep_embedding")
            and info.has_key_prefix("lead_embeddings.", "encoder.lead_embeddings.", "module.lead_embeddings.",
                                    "module.encoder.lead_embeddings."))


def read_layout(sd: dict[str, torch.Tensor], file_cfg: dict, overrides: dict, source: str) -> dict[str, Any]:
    """Check a released ``model`` state dict (tensors, or meta tensors for shapes only) against its layout.

    Returns ``layout``, ``config``, ``heads_from``, ``encoder`` (the tensors the model loads) and, for the
    full layout, ``decoder_tensors`` / ``decoder_parameters`` / ``aliases`` (checked, then left out).
    Raises one :class:`CheckpointError` listing missing, unexpected and mis-shaped tensors.
    """
    layout = detect_layout(sd)
    enc = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")} if layout == "full" else dict(sd)
    cfg, heads_from = infer_config(enc, file_cfg, overrides, source)
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in StMem(cfg, contract=contract_for(cfg)).state_dict().items()}
    out: dict[str, Any] = {"layout": layout, "config": cfg, "heads_from": heads_from, "encoder": enc}
    if layout != "full":
        match_state_dict(expected, enc, source)
        return out
    rows = int(enc["pos_embedding"].shape[1])
    full = {f"encoder.{k}": v for k, v in expected.items()}
    aliases = [k for k in expected if k.startswith("to_patch_embedding.")]
    full.update({k: expected[k] for k in aliases})
    full.update(decoder_shapes(sd, cfg["width"], rows, cfg["patch_size"], source))
    match_state_dict(full, sd, source, what="the ST-MEM pretraining model (encoder + decoder)")
    for k in aliases:
        a, b = sd[k], sd[f"encoder.{k}"]
        if a.device.type != "meta" and not torch.equal(a, b):
            raise CheckpointError(f"{source}: {k} differs from encoder.{k}; in ST-MEM they are one module",
                                  "the file was edited after it was written")
    dec = [k for k in sd if k.startswith(DECODER_KEYS)]
    out.update(decoder_tensors=len(dec), decoder_parameters=sum(sd[k].numel() for k in dec), aliases=len(aliases))
    return out


@register_importer(IMPORTER, _sniff, "ST-MEM .pth (the released encoder st_mem_vit_base_encoder.pth, the full "
                                     "pretraining checkpoint st_mem_vit_base_full.pth, or a finetuned best-*.pth)")
def import_stmem(path, **overrides) -> tuple[StMem, list[str]]:
    """Load a released ST-MEM ``.pth`` (encoder, full pretraining or finetuned layout) into a :class:`StMem`."""
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise UsageError(f"{path}: ST-MEM files store every architecture field but the heads; cannot set "
                         f"{', '.join(unknown)}", f"settable: {', '.join(OVERRIDES)}")
    path = Path(path)
    source = str(path)
    sd, top = extract_state_dict(safe_load(path), source)
    file_cfg = top.get("config") or {}
    r = read_layout(sd, file_cfg, overrides, source)
    cfg, enc, layout = r["config"], r["encoder"], r["layout"]
    model = StMem(cfg, contract=contract_for(cfg))
    model.load_state_dict({k: v.to(torch.float32) for k, v in enc.items()}, strict=True)
    model.eval()
    prov_fields: dict[str, Any] = {"layout": layout, "epoch": top.get("epoch"),
                                   "model_name": file_cfg.get("model_name"), "metrics": top.get("metrics") or None,
                                   "heads_from": r["heads_from"]}
    if isinstance(file_cfg.get("model"), dict):
        prov_fields["file_model_config"] = _plain(file_cfg["model"])
    model.extra["provenance"] = provenance(path, IMPORTER, **prov_fields)
    n_params = sum(p.numel() for p in model.parameters())
    lines = [f"read {source} (ST-MEM {layout} checkpoint, sha256 {model.extra['provenance']['sha256']})"]
    info = [f"{k}={v}" for k, v in (("epoch", top.get("epoch")), ("model_name", file_cfg.get("model_name")))
            if v is not None]
    if top.get("metrics"):
        info.append("metrics " + ", ".join(f"{k}={v:.4g}" for k, v in top["metrics"].items()))
    if info:
        lines.append("  " + ", ".join(info))
    lines.append(f"  ST_MEM_ViT: {cfg['num_leads']} leads, {cfg['seq_len']} samples in patches of {cfg['patch_size']}, "
                 f"width {cfg['width']}, {cfg['depth']} blocks, {cfg['heads']} heads of {cfg['dim_head']} "
                 f"(heads from {r['heads_from']}), mlp {cfg['mlp_dim']}, "
                 f"{cfg['num_classes'] or 'no'} outputs{'' if cfg['num_classes'] else ' (an encoder)'}")
    lines.append(f"  {len(enc)} tensors loaded ({n_params:,} parameters)")
    if layout == "full":
        lines.append(f"  pretraining decoder checked and left out: {r['decoder_tensors']} tensors "
                     f"({r['decoder_parameters']:,} parameters); {r['aliases']} to_patch_embedding.* aliases "
                     "equal to encoder.to_patch_embedding.*")
    return model, lines
