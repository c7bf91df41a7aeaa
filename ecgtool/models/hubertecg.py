"""HuBERT-ECG (Coppola et al., 2024): a HuBERT encoder over the 12 leads laid end to end.

The arithmetic follows ../shared/reference/hubertecg.md (the Hugging Face
``HubertModel`` of transformers 4.46.3 in eval mode, as HuBERT-ECG subclasses
it), written here without transformers:

* **input**: the 12 leads of 5 s at 500 Hz, flattened lead after lead
  (30,000 samples) and decimated by 5 *on the flattened vector* with
  ``scipy.signal.decimate`` (order-8 Chebyshev-I IIR, zero-phase, float64),
  giving (B, 6000) at 100 Hz. That is :meth:`HuBERTECG.prepare` (numpy); the
  contract stays 12 leads x 2500 samples at 500 Hz, and :meth:`features` /
  :meth:`embed` take the prepared (B, 6000) tensor.
* **feature encoder**: five bias-free Conv1d (k 10,3,3,2,2; s 4,2,2,2,2), a
  GroupNorm(C, C) after the first only, exact GELU after each -> 93 frames.
* **feature projection**: LayerNorm, Linear, dropout.
* **encoder** (post-LN, ``do_stable_layer_norm=False``): padded frames set to
  0, a grouped positional conv with weight norm over dim 2 (w = g v / ||v||,
  norm over dims 0 and 1 per tap), the last output frame dropped for an even
  kernel, GELU, added; LayerNorm *before* the layers; then
  attention -> add -> LN -> FFN -> add -> LN per layer; no final LayerNorm.
* **pooling**: the mean over frames (with an attention mask, over the frames
  the original's *prefix rule* keeps: the mask's sum turned into a conv output
  length n, frames 0..n-1 valid).
* **pretraining heads**: ``final_proj.i`` / ``label_embedding.i`` per codebook,
  logits = cosine(final_proj(h), E) / 0.1; the fine-tuned classifier (the
  original's ``HuBERTForECGClassification``) drops them and puts a linear
  ``classifier`` on the pooled vector.

Parameter names are the released ones (unprefixed ``HuBERTECG`` state dict),
except that the positional conv's weight norm is stored as
``encoder.pos_conv_embed.conv.weight_g`` / ``weight_v`` (the importers map
torch >= 2.1's ``parametrizations.weight.original0/1`` onto them).

Released layouts, both read without transformers and without running a pickle:

* the trainer's ``.pt`` (``hubert_ecg_{small,base,large}.pt``, fine-tuned
  ``.pt`` files): a pickled dict whose ``model_config`` is a pickled
  ``HuBERTECGConfig`` / ``HubertConfig`` object, read as an inert stub;
* the Hugging Face folder (``config.json`` + ``model.safetensors`` or
  ``pytorch_model.bin``) of ``Edoardo-BS/hubert-ecg-{small,base,large}``, or a
  ``model.safetensors`` alone (architecture from tensor shapes).

Code and weights are CC BY-NC 4.0 (non-commercial).
"""

from __future__ import annotations

import json
import math
import re
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
from ecgtool.models.serial import FileInfo, match_state_dict, provenance, safe_load

FAMILY = "hubertecg"

# The base configuration (HE:code/pretrain.py "size model hyperparams", --downsampling_factor=5),
# in ecgtool's field names (the Hugging Face names where there is one).
BASE_CONFIG: dict[str, Any] = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "conv_dim": [512, 512, 512, 512, 512],
    "conv_kernel": [10, 3, 3, 2, 2],
    "conv_stride": [4, 2, 2, 2, 2],
    "conv_bias": False,
    "feat_extract_norm": "group",
    "feat_proj_layer_norm": True,
    "num_conv_pos_embeddings": 128,
    "num_conv_pos_embedding_groups": 16,
    "layer_norm_eps": 1e-5,
    "hidden_dropout": 0.1,
    "attention_dropout": 0.1,
    "activation_dropout": 0.1,
    "feat_proj_dropout": 0.0,
    "classifier_dropout": 0.1,
    "layerdrop": 0.1,
    "masked_spec_embed": True,       # the learned mask vector (present whenever mask_time_prob > 0 at build)
    "classifier_proj_size": 256,     # width of the pretraining projection
    "vocab_sizes": [500],            # one codebook per entry; [] = no pretraining heads
    "n_classes": None,               # the fine-tuned linear head
    "decimate": 5,                   # prepare(): 500 Hz flattened -> 100 Hz (320 / total conv stride)
}

SIZES: dict[str, dict[str, Any]] = {
    "small": {"hidden_size": 512, "num_hidden_layers": 8, "num_attention_heads": 8, "intermediate_size": 2048,
              "classifier_proj_size": 256},
    "base": {},
    "large": {"hidden_size": 960, "num_hidden_layers": 16, "num_attention_heads": 12, "intermediate_size": 3840,
              "classifier_proj_size": 512},
}
TINY_CONFIG = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
               "conv_dim": [32, 32, 32, 32, 32], "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4,
               "classifier_proj_size": 16, "vocab_sizes": [20]}

# heads of the released widths (a bare safetensors file does not store the head count)
RELEASED_HEADS = {512: 8, 768: 12, 960: 12}
# the conv stack of the no-downsampling variant hops 320 samples at 500 Hz
NATIVE_HOP = 320


def _contract() -> InputContract:
    return card("hubertecg-base").contract


def normalise_config(config: dict[str, Any]) -> dict[str, Any]:
    """A complete, JSON-serialisable, checked config (defaults: the base size)."""
    unknown = set(config) - set(BASE_CONFIG)
    if unknown:
        raise ValueError(f"unknown HuBERT-ECG config keys: {', '.join(sorted(unknown))}")
    cfg = {**BASE_CONFIG, **config}
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "num_conv_pos_embeddings", "num_conv_pos_embedding_groups", "classifier_proj_size", "decimate"):
        cfg[key] = int(cfg[key])
    for key in ("conv_dim", "conv_kernel", "conv_stride", "vocab_sizes"):
        value = cfg[key]
        cfg[key] = [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    for key in ("layer_norm_eps", "hidden_dropout", "attention_dropout", "activation_dropout",
                "feat_proj_dropout", "classifier_dropout", "layerdrop"):
        cfg[key] = float(cfg[key])
    for key in ("conv_bias", "feat_proj_layer_norm", "masked_spec_embed"):
        cfg[key] = bool(cfg[key])
    cfg["n_classes"] = None if cfg["n_classes"] in (None, 0) else int(cfg["n_classes"])
    if not (len(cfg["conv_dim"]) == len(cfg["conv_kernel"]) == len(cfg["conv_stride"]) >= 1):
        raise ValueError(f"conv_dim, conv_kernel and conv_stride must have one entry per conv layer "
                         f"({len(cfg['conv_dim'])}, {len(cfg['conv_kernel'])}, {len(cfg['conv_stride'])})")
    if cfg["feat_extract_norm"] != "group":
        raise ValueError(f"feat_extract_norm {cfg['feat_extract_norm']!r} is not supported "
                         "(HuBERT-ECG uses 'group': GroupNorm after the first conv only)")
    d, h, g = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_conv_pos_embedding_groups"]
    if h <= 0 or d % h:
        raise ValueError(f"hidden_size {d} is not divisible by num_attention_heads {h}")
    if g <= 0 or d % g:
        raise ValueError(f"hidden_size {d} is not divisible by num_conv_pos_embedding_groups {g}")
    if cfg["decimate"] < 1:
        raise ValueError(f"decimate must be >= 1, not {cfg['decimate']}")
    return cfg


def conv_output_length(length: torch.Tensor | int, kernels: Sequence[int], strides: Sequence[int]):
    """Frames after the conv stack: L <- floor((L - k) / s) + 1 per layer (the original's formula)."""
    for k, s in zip(kernels, strides):
        if isinstance(length, torch.Tensor):
            length = torch.div(length - k, s, rounding_mode="floor") + 1
        else:
            length = (length - k) // s + 1
    return length


# ----------------------------------------------------------------------------- modules


class ConvLayer(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, bias: bool, norm: bool):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, stride=stride, bias=bias)
        self.layer_norm = nn.GroupNorm(c_out, c_out, affine=True) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return F.gelu(x)


class FeatureEncoder(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        dims = [1] + cfg["conv_dim"]
        self.conv_layers = nn.ModuleList(
            ConvLayer(dims[i], dims[i + 1], cfg["conv_kernel"][i], cfg["conv_stride"][i], cfg["conv_bias"], i == 0)
            for i in range(len(cfg["conv_dim"]))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, None, :]
        for layer in self.conv_layers:
            x = layer(x)
        return x  # (B, C, T')


class FeatureProjection(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        c = cfg["conv_dim"][-1]
        self.layer_norm = nn.LayerNorm(c, eps=cfg["layer_norm_eps"]) if cfg["feat_proj_layer_norm"] else None
        self.projection = nn.Linear(c, cfg["hidden_size"])
        self.dropout = nn.Dropout(cfg["feat_proj_dropout"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return self.dropout(self.projection(x))


class WeightNormConv1d(nn.Module):
    """Conv1d with weight norm over dim 2: w = g * v / ||v||, the norm over dims (0, 1) for each tap."""

    def __init__(self, channels: int, kernel: int, groups: int):
        super().__init__()
        self.padding = kernel // 2
        self.groups = groups
        self.weight_g = nn.Parameter(torch.ones(1, 1, kernel))
        self.weight_v = nn.Parameter(torch.empty(channels, channels // groups, kernel))
        self.bias = nn.Parameter(torch.zeros(channels))
        nn.init.normal_(self.weight_v, std=math.sqrt(4.0 / (kernel * channels)))

    @property
    def weight(self) -> torch.Tensor:
        v = self.weight_v
        return v * (self.weight_g / v.norm(dim=(0, 1), keepdim=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.weight, self.bias, padding=self.padding, groups=self.groups)


class PositionalConvEmbedding(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        k = cfg["num_conv_pos_embeddings"]
        self.conv = WeightNormConv1d(cfg["hidden_size"], k, cfg["num_conv_pos_embedding_groups"])
        self.remove = 1 if k % 2 == 0 else 0  # SamePad: drop the last frame of an even kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        y = self.conv(x.transpose(1, 2))
        if self.remove:
            y = y[:, :, : -self.remove]
        return F.gelu(y).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.dropout = dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self._split(self.q_proj(x)), self._split(self.k_proj(x)), self._split(self.v_proj(x))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                             dropout_p=self.dropout if self.training else 0.0)
        b, _, t, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, t, -1))

    def weights(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """Softmax attention probabilities (B, H, T, T)."""
        q, k = self._split(self.q_proj(x)), self._split(self.k_proj(x))
        scores = (q * self.head_dim ** -0.5) @ k.transpose(-1, -2)
        if bias is not None:
            scores = scores + bias
        return scores.softmax(-1)


class FeedForward(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.intermediate_dense = nn.Linear(cfg["hidden_size"], cfg["intermediate_size"])
        self.output_dense = nn.Linear(cfg["intermediate_size"], cfg["hidden_size"])
        self.intermediate_dropout = nn.Dropout(cfg["activation_dropout"])
        self.output_dropout = nn.Dropout(cfg["hidden_dropout"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.intermediate_dropout(F.gelu(self.intermediate_dense(x)))
        return self.output_dropout(self.output_dense(x))


class EncoderLayer(nn.Module):
    """Post-LN block: x <- LN(x + attn(x)); x <- LN(x + FFN(x))."""

    def __init__(self, cfg: dict):
        super().__init__()
        d, eps = cfg["hidden_size"], cfg["layer_norm_eps"]
        self.attention = Attention(d, cfg["num_attention_heads"], cfg["attention_dropout"])
        self.dropout = nn.Dropout(cfg["hidden_dropout"])
        self.layer_norm = nn.LayerNorm(d, eps=eps)
        self.feed_forward = FeedForward(cfg)
        self.final_layer_norm = nn.LayerNorm(d, eps=eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        x = self.layer_norm(x + self.dropout(self.attention(x, bias)))
        return self.final_layer_norm(x + self.feed_forward(x))


class Encoder(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.pos_conv_embed = PositionalConvEmbedding(cfg)
        self.layer_norm = nn.LayerNorm(cfg["hidden_size"], eps=cfg["layer_norm_eps"])
        self.dropout = nn.Dropout(cfg["hidden_dropout"])
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg["num_hidden_layers"]))
        self.layerdrop = cfg["layerdrop"]

    def embed(self, x: torch.Tensor, valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The input of layer 0 and the additive key mask (B, 1, T, T) (None without a mask)."""
        bias = None
        if valid is not None:
            x = x.masked_fill(~valid[:, :, None], 0.0)
            bias = (~valid).to(x.dtype)[:, None, None, :] * torch.finfo(x.dtype).min
            bias = bias.expand(x.shape[0], 1, x.shape[1], x.shape[1])
        x = self.dropout(self.layer_norm(x + self.pos_conv_embed(x)))
        return x, bias

    def run_layer(self, i: int, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.training and self.layerdrop > 0 and float(torch.rand((), device="cpu")) < self.layerdrop:
            return x  # LayerDrop (training only)
        return self.layers[i](x, bias)


# ----------------------------------------------------------------------------- the model


@register_family
class HuBERTECG(EcgModel):
    """HuBERT-ECG behind the model interface.

    ``features(x)`` takes the prepared (B, 6000) tensor (:meth:`prepare`) and
    gives the per-token states (B, 93, D); ``layer`` i is the output of
    encoder layer i. ``embed`` is the mean over tokens (the original's pooling).
    """

    family = FAMILY
    head_name = "classifier"
    capabilities = frozenset({ATTENTION})

    def __init__(self, config: dict[str, Any] | None = None, contract: InputContract | None = None,
                 label_names: Sequence[str] | None = None):
        cfg = normalise_config(config or {})
        contract = contract or _contract()
        if label_names is not None and (cfg["n_classes"] is None or len(label_names) != cfg["n_classes"]):
            raise ValueError(f"{len(label_names)} label names for {cfg['n_classes']} outputs")
        super().__init__(cfg, contract, label_names)
        d = cfg["hidden_size"]
        self.masked_spec_embed = nn.Parameter(torch.rand(d)) if cfg["masked_spec_embed"] else None
        self.feature_extractor = FeatureEncoder(cfg)
        self.feature_projection = FeatureProjection(cfg)
        self.encoder = Encoder(cfg)
        self._build_pretraining_heads()
        self.classifier_dropout = nn.Dropout(cfg["classifier_dropout"])
        self.classifier = self.make_classifier(cfg["n_classes"]) if cfg["n_classes"] else None

    def _build_pretraining_heads(self) -> None:
        cfg = self.config
        if cfg["vocab_sizes"]:
            p = cfg["classifier_proj_size"]
            self.final_proj = nn.ModuleList(nn.Linear(cfg["hidden_size"], p) for _ in cfg["vocab_sizes"])
            self.label_embedding = nn.ModuleList(nn.Embedding(v, p) for v in cfg["vocab_sizes"])
        else:
            self.final_proj = None
            self.label_embedding = None

    # -- input ---------------------------------------------------------------

    def prepare(self, x: np.ndarray) -> np.ndarray:
        """(N, L, T) in the contract's layout -> (N, L*T / decimate) float32: NaNs replaced by the
        record's mean (as the original's dataset does), leads flattened one after another, then
        ``scipy.signal.decimate`` on the flattened vector in float64."""
        from scipy.signal import decimate

        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3:
            raise ValueError(f"HuBERT-ECG prepare() takes (N, leads, samples), not shape {x.shape}")
        if len(x) and np.isnan(x).any():
            x = x.copy()
            for i in range(len(x)):
                bad = np.isnan(x[i])
                if bad.any():
                    x[i][bad] = np.nanmean(x[i]) if not bad.all() else 0.0
        flat = x.reshape(len(x), -1)
        q = self.config["decimate"]
        if q > 1 and flat.shape[-1]:
            flat = decimate(flat, q, axis=-1)
        return np.ascontiguousarray(flat, dtype=np.float32)

    def input_saliency(self, s: np.ndarray, n_leads: int, n_samples: int) -> np.ndarray:
        """Attributions on the flattened, decimated input (N, L*T/q) -> (N, L, T): back to leads, then
        each value spread over the q samples it was decimated from."""
        from ecgtool.signal.resample import stretch

        return stretch(np.asarray(s).reshape(len(s), n_leads, -1), n_samples)

    def token_saliency(self, per_token: np.ndarray, n_leads: int, n_samples: int) -> np.ndarray:
        """Tokens run along the flattened leads: spread them over that vector, then back to leads."""
        from ecgtool.signal.resample import stretch

        flat = stretch(per_token, n_leads * n_samples // int(self.config["decimate"]))
        return self.input_saliency(flat, n_leads, n_samples)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 2:
            raise ValueError(f"HuBERT-ECG takes the prepared (B, samples) tensor (leads flattened and decimated "
                             f"by model.prepare()), not shape {tuple(x.shape)}")

    # -- padding ---------------------------------------------------------------

    def frame_padding_mask(self, padding_mask: torch.Tensor | None, n_frames: int) -> torch.Tensor | None:
        """Frames that are padding (B, T'), by the original's prefix rule.

        ``padding_mask`` (True = padding) is frame-level (B, T'), sample-level on the prepared input
        (B, L*T/decimate), or on the contract's time axis (B, T) / (B, L, T) at the contract's rate. The
        original counts the valid samples of its flattened 100 Hz input (for a time mask: leads x the
        valid 100 Hz columns), turns that count into a conv output length n and keeps frames 0..n-1,
        wherever the valid samples lie."""
        if padding_mask is None:
            return None
        pm = padding_mask.bool()
        if pm.ndim == 2 and pm.shape[-1] == n_frames:
            return pm
        q = self.config["decimate"]
        n_leads = len(self.contract.leads)
        if pm.ndim == 3:  # (B, L, T): a time step is padding when every lead is
            pm = pm.all(1)
        if pm.ndim != 2:
            raise ValueError(f"padding_mask of shape {tuple(padding_mask.shape)}: expected (B, T) or (B, L, T)")
        valid = (~pm).sum(-1)
        if pm.shape[-1] != self.input_length() or padding_mask.ndim == 3:
            valid = n_leads * torch.div(valid + q - 1, q, rounding_mode="floor")
        n = conv_output_length(valid, self.config["conv_kernel"], self.config["conv_stride"]).clamp(1, n_frames)
        return torch.arange(n_frames, device=pm.device)[None, :] >= n[:, None]

    def input_length(self) -> int:
        """Samples of the prepared input for the contract (6000 for 12 x 2500 at decimate 5)."""
        return -(-len(self.contract.leads) * self.contract.n_samples // self.config["decimate"])

    def output_length(self, n_samples: int | None = None) -> int:
        n = self.input_length() if n_samples is None else n_samples
        return int(conv_output_length(n, self.config["conv_kernel"], self.config["conv_stride"]))

    # -- forward ---------------------------------------------------------------

    def _stem(self, x: torch.Tensor, padding_mask: torch.Tensor | None):
        self._check_input(x)
        conv = self.feature_extractor(x)
        proj = self.feature_projection(conv.transpose(1, 2))
        pm = self.frame_padding_mask(padding_mask, proj.shape[1])
        return conv, proj, (None if pm is None else ~pm)

    def forward_intermediates(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> dict:
        """``conv_features`` (B, C, T'), ``projected_features`` (B, T', D), ``hidden_states`` (the
        input of layer 0, then each layer's output), ``last_hidden_state``, ``frame_padding_mask``."""
        conv, proj, valid = self._stem(x, padding_mask)
        h, bias = self.encoder.embed(proj, valid)
        states = [h]
        for i in range(len(self.encoder.layers)):
            h = self.encoder.run_layer(i, h, bias)
            states.append(h)
        return {"conv_features": conv, "projected_features": proj, "hidden_states": states,
                "last_hidden_state": h, "frame_padding_mask": None if valid is None else ~valid}

    def features(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None,
                 layer: int | None = None) -> torch.Tensor:
        i = self.layer_index(layer)
        _, proj, valid = self._stem(x, padding_mask)
        h, bias = self.encoder.embed(proj, valid)
        for j in range(len(self.encoder.layers) if i is None else i + 1):
            h = self.encoder.run_layer(j, h, bias)
        return h

    def attention(self, x: torch.Tensor, layer: int = -1, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Head-averaged softmax attention (B, T', T') of encoder layer ``layer``."""
        i = self.layer_index(layer)
        _, proj, valid = self._stem(x, padding_mask)
        h, bias = self.encoder.embed(proj, valid)
        for j in range(i):
            h = self.encoder.layers[j](h, bias)
        return self.encoder.layers[i].attention.weights(h, bias).mean(1)

    def head_input(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.classifier_dropout(self.embed(x, padding_mask))

    def pretrain_logits(self, hidden: torch.Tensor) -> list[torch.Tensor]:
        """Per codebook: cosine(final_proj_i(h), label_embedding_i) / 0.1, (B, T', V_i)."""
        if self.final_proj is None:
            raise ValueError("this HuBERT-ECG model has no pretraining heads")
        out = []
        for proj, emb in zip(self.final_proj, self.label_embedding):
            p = proj(hidden)
            out.append(F.cosine_similarity(p.unsqueeze(2), emb.weight[None, None], dim=-1) / 0.1)
        return out

    # -- the model interface -----------------------------------------------------

    def feature_dim(self, layer: int | None = None) -> int:
        self.layer_index(layer)
        return int(self.config["hidden_size"])

    def layer_modules(self) -> list[nn.Module]:
        return list(self.encoder.layers)

    def input_modules(self) -> list[nn.Module]:
        return [self.feature_extractor]  # fine-tuning keeps the conv feature encoder frozen

    def classifier_config(self, n_labels: int | None) -> dict[str, Any]:
        """With a head, the pretraining heads go (as HuBERTForECGClassification deletes them);
        masked_spec_embed stays (the original's fine-tuned files keep it)."""
        if n_labels:
            return {**self.config, "n_classes": int(n_labels), "vocab_sizes": []}
        return {**self.config, "n_classes": None}

    def reset_classifier(self, label_names) -> None:
        super().reset_classifier(label_names)
        if not self.config["vocab_sizes"] and self.final_proj is not None:
            self._build_pretraining_heads()

    def make_classifier(self, n_labels: int) -> nn.Module:
        return nn.Linear(int(self.config["hidden_size"]), n_labels)


# ----------------------------------------------------------------------------- registered variants


def _variant(base: dict[str, Any], overrides: dict[str, Any]) -> HuBERTECG:
    overrides = dict(overrides)
    contract = overrides.pop("contract", None)
    labels = overrides.pop("label_names", None)
    return HuBERTECG(normalise_config({**base, **overrides}), contract=contract, label_names=labels)


@register_model("hubertecg-small")
def hubertecg_small(**overrides) -> HuBERTECG:
    return _variant(SIZES["small"], overrides)


@register_model("hubertecg-base")
def hubertecg_base(**overrides) -> HuBERTECG:
    return _variant(SIZES["base"], overrides)


@register_model("hubertecg-large")
def hubertecg_large(**overrides) -> HuBERTECG:
    return _variant(SIZES["large"], overrides)


@register_model("hubertecg-base-cardiolearning")
def hubertecg_base_cardiolearning(**overrides) -> HuBERTECG:
    return _variant({"n_classes": 164, "vocab_sizes": [], "layerdrop": 0.0}, overrides)


@register_model("hubertecg-tiny")
def hubertecg_tiny(**overrides) -> HuBERTECG:
    return _variant(TINY_CONFIG, overrides)


# ----------------------------------------------------------------------------- released files

IMPORTER_PT = "hubert-ecg-pt"
IMPORTER_HF = "hubert-ecg-hf"
CONFIG_CLASSES = ("HuBERTECGConfig", "HubertConfig")
STUB_MODULES = ("hubert_ecg", "__main__")
PREFIX = "hubert_ecg."  # the fine-tuned wrapper's backbone prefix
WN_RENAMES = {"encoder.pos_conv_embed.conv.parametrizations.weight.original0": "encoder.pos_conv_embed.conv.weight_g",
              "encoder.pos_conv_embed.conv.parametrizations.weight.original1": "encoder.pos_conv_embed.conv.weight_v"}
# architecture fields a file without a config cannot store; "decimate" is never stored
SHAPELESS_FIELDS = ("num_attention_heads", "conv_stride", "layer_norm_eps")
ALWAYS_OVERRIDABLE = ("decimate",)
# Hugging Face config fields read into ecgtool's config (same names)
HF_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "conv_dim",
             "conv_kernel", "conv_stride", "conv_bias", "feat_extract_norm", "feat_proj_layer_norm",
             "num_conv_pos_embeddings", "num_conv_pos_embedding_groups", "layer_norm_eps", "hidden_dropout",
             "attention_dropout", "activation_dropout", "feat_proj_dropout", "layerdrop", "classifier_proj_size")
# HubertConfig's defaults, for configs pickled by an older transformers that lack a field
HUBERT_DEFAULTS = {"feat_proj_layer_norm": True, "feat_proj_dropout": 0.0, "layerdrop": 0.1,
                   "classifier_proj_size": 256, "do_stable_layer_norm": False, "conv_bias": False,
                   "feat_extract_norm": "group", "hidden_act": "gelu", "feat_extract_activation": "gelu",
                   "layer_norm_eps": 1e-5, "hidden_dropout": 0.1, "attention_dropout": 0.1,
                   "activation_dropout": 0.1, "num_conv_pos_embeddings": 128, "num_conv_pos_embedding_groups": 16}
BACKBONE_KEY = "feature_extractor.conv_layers.0.conv.weight"
CONV_KEY = re.compile(r"^feature_extractor\.conv_layers\.(\d+)\.conv\.weight$")
LAYER_KEY = re.compile(r"^encoder\.layers\.(\d+)\.")
HEAD_KEY = re.compile(r"^(final_proj|label_embedding)\.(\d+)\.")


def _tensor_keys(names) -> bool:
    names = set(names)
    plain = any(n.startswith(("final_proj.0.", "label_embedding.0.")) for n in names)
    prefixed = any(n.startswith(PREFIX + "feature_extractor.") for n in names)
    return (plain and BACKBONE_KEY in names) or prefixed


def _sniff_pt(info: FileInfo) -> bool:
    if info.kind != "torch":
        return False
    s = info.strings
    has_config = any(x.split(" ")[-1] in CONFIG_CLASSES for x in s) and {"model_state_dict", "model_config"} <= s
    return (has_config and info.has_key_prefix("feature_extractor.conv_layers.", PREFIX + "feature_extractor.")) \
        or _tensor_keys(s)


def _sniff_hf(info: FileInfo) -> bool:
    if info.kind == "safetensors":
        return not info.native and _tensor_keys(info.header or {})
    if info.kind != "folder" or "config.json" not in info.files:
        return False
    if not ({"model.safetensors", "pytorch_model.bin"} & info.files):
        return False
    try:
        cfg = json.loads((info.path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    archs = cfg.get("architectures") or []
    return str(cfg.get("model_type", "")).startswith("hubert_ecg") or any("HuBERTECG" in str(a) or "ForECG" in str(a)
                                                                         for a in archs)


def _strip(sd: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Tensors under ecgtool's names: the fine-tuned ``hubert_ecg.`` prefix dropped (``classifier.*`` and
    the pretraining heads stay), the weight-norm parametrization renamed to weight_g / weight_v."""
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{source}: state dict entries that are not tensors: {', '.join(map(str, bad[:10]))}")
    if any(k.startswith(PREFIX) for k in sd):
        sd = {k[len(PREFIX):] if k.startswith(PREFIX) else k: v for k, v in sd.items()}
    return {WN_RENAMES.get(k, k): v for k, v in sd.items()}


def _config_fields(obj: Any, source: str) -> dict[str, Any]:
    """The fields of a pickled HuBERTECGConfig / HubertConfig (an inert stub) or of a config dict."""
    from ecgtool.models.serial import Stub

    if isinstance(obj, dict):
        return dict(obj)
    if isinstance(obj, Stub):
        name = obj.qualified_name.rsplit(".", 1)[-1]
        if name not in CONFIG_CLASSES:
            raise CheckpointError(f"{source}: model_config is a {obj.qualified_name}, not a HuBERTECGConfig/HubertConfig")
        state = getattr(obj, "state", None)
        fields = dict(state) if isinstance(state, dict) else {}
        if isinstance(state, tuple) and state and isinstance(state[0], dict):
            fields = dict(state[0])
        fields.update(getattr(obj, "kwargs", None) or {})
        if not fields:
            raise CheckpointError(f"{source}: the pickled {obj.qualified_name} holds no fields")
        return fields
    raise CheckpointError(f"{source}: model_config is a {type(obj).__name__}, not a HuBERT-ECG config")


def _check_hf(fields: dict[str, Any], source: str) -> None:
    def field(name):
        return fields.get(name, HUBERT_DEFAULTS.get(name))

    if field("do_stable_layer_norm"):
        raise CheckpointError(f"{source}: do_stable_layer_norm=True (a pre-LN HuBERT), not HuBERT-ECG's post-LN encoder")
    if fields.get("conv_pos_batch_norm"):
        raise CheckpointError(f"{source}: conv_pos_batch_norm=True is not HuBERT-ECG's positional conv")
    for name in ("hidden_act", "feat_extract_activation"):
        if str(field(name)) != "gelu":
            raise CheckpointError(f"{source}: {name}={field(name)!r}; HuBERT-ECG uses exact GELU")
    n_conv = fields.get("num_feat_extract_layers")
    if n_conv is not None and n_conv != len(fields.get("conv_dim") or ()):
        raise CheckpointError(f"{source}: num_feat_extract_layers {n_conv} but {len(fields['conv_dim'])} conv_dim entries")


def config_from_fields(fields: dict[str, Any], sd: dict[str, torch.Tensor], source: str) -> dict[str, Any]:
    """ecgtool's config from a HuBERT-ECG config's fields; the heads' presence from the tensors."""
    _check_hf(fields, source)
    missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                           "conv_dim", "conv_kernel", "conv_stride") if k not in fields]
    if missing:
        raise CheckpointError(f"{source}: the config lacks {', '.join(missing)}")
    cfg = {k: fields.get(k, HUBERT_DEFAULTS.get(k)) for k in HF_FIELDS}
    cfg["classifier_dropout"] = fields.get("classifier_dropout_prob", fields.get("final_dropout", 0.1))
    cfg.update(_heads_from_tensors(sd, source, vocab=fields.get("vocab_sizes")))
    cfg["decimate"] = _decimate(cfg["conv_stride"], source)
    return cfg


def _decimate(strides: Sequence[int], source: str) -> int:
    hop = int(np.prod([int(s) for s in strides]))
    if hop <= 0 or NATIVE_HOP % hop:
        raise CheckpointError(f"{source}: total conv stride {hop} is not one of HuBERT-ECG's 500 Hz input rates "
                              f"(hop {NATIVE_HOP} at 500 Hz, 64 at 100 Hz after decimating by 5)",
                              "give decimate=Q (the factor prepare() decimates the 500 Hz leads by)")
    return NATIVE_HOP // hop


def _heads_from_tensors(sd: dict[str, torch.Tensor], source: str, vocab=None) -> dict[str, Any]:
    """masked_spec_embed, the pretraining heads (vocab sizes from label_embedding.i) and the classifier."""
    out: dict[str, Any] = {"masked_spec_embed": "masked_spec_embed" in sd}
    idx = sorted({int(m.group(2)) for k in sd if (m := HEAD_KEY.match(k))})
    if idx != list(range(len(idx))):
        raise CheckpointError(f"{source}: pretraining head indices {idx} are not 0..N-1")
    sizes = []
    for i in idx:
        emb = sd.get(f"label_embedding.{i}.weight")
        if emb is None or emb.ndim != 2:
            raise CheckpointError(f"{source}: missing label_embedding.{i}.weight (V, proj) beside final_proj.{i}")
        sizes.append(int(emb.shape[0]))
    if sizes and vocab is not None:
        vocab = [int(v) for v in (vocab if isinstance(vocab, (list, tuple)) else [vocab])]
        if vocab != sizes:
            raise CheckpointError(f"{source}: the config's vocab_sizes {vocab} do not match the label embeddings {sizes}")
    out["vocab_sizes"] = sizes
    if sizes:
        w = sd.get("final_proj.0.weight")
        if w is not None and w.ndim == 2:
            out["classifier_proj_size"] = int(w.shape[0])
    head = sd.get("classifier.weight")
    if head is not None:
        if head.ndim != 2:
            raise CheckpointError(f"{source}: classifier.weight has shape {tuple(head.shape)}, expected (labels, D)")
        out["n_classes"] = int(head.shape[0])
    elif any(k.startswith("classifier.") for k in sd):
        raise CheckpointError(f"{source}: a classifier without classifier.weight "
                              f"({', '.join(k for k in sd if k.startswith('classifier.'))}): only the linear head is read")
    return out


def config_from_tensors(sd: dict[str, torch.Tensor], source: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The architecture from tensor shapes alone (a weights file without its config.json).

    Shapes give widths, kernels, depth, groups and heads' sizes; the head count comes from the
    released widths (512 -> 8, 768 -> 12, 960 -> 12) or ``num_attention_heads=``; conv strides
    and LayerNorm eps are the released ones unless given."""
    convs = sorted((int(m.group(1)), v) for k, v in sd.items() if (m := CONV_KEY.match(k)))
    if not convs or [i for i, _ in convs] != list(range(len(convs))):
        raise CheckpointError(f"{source}: conv layers {[i for i, _ in convs]} are not 0..N-1")
    proj = sd.get("feature_projection.projection.weight")
    v = sd.get("encoder.pos_conv_embed.conv.weight_v")
    ffn = sd.get("encoder.layers.0.feed_forward.intermediate_dense.weight")
    if proj is None or v is None or ffn is None or v.ndim != 3:
        raise CheckpointError(f"{source}: missing feature_projection.projection.weight, the positional conv or "
                              "encoder layer 0: not a HuBERT-ECG state dict")
    d = int(proj.shape[0])
    layers = sorted({int(m.group(1)) for k in sd if (m := LAYER_KEY.match(k))})
    if layers != list(range(len(layers))):
        raise CheckpointError(f"{source}: encoder layer indices {layers} are not 0..N-1")
    heads = overrides.get("num_attention_heads", RELEASED_HEADS.get(d))
    if heads is None:
        raise CheckpointError(f"{source}: the file does not store the number of attention heads for width {d}",
                              "give num_attention_heads=N (or import the folder with its config.json)")
    strides = overrides.get("conv_stride", BASE_CONFIG["conv_stride"])
    if len(strides) != len(convs):
        raise CheckpointError(f"{source}: {len(convs)} conv layers but {len(strides)} conv strides",
                              "give conv_stride=[...] with one stride per conv layer")
    cfg = {
        "hidden_size": d, "num_hidden_layers": len(layers), "num_attention_heads": int(heads),
        "intermediate_size": int(ffn.shape[0]),
        "conv_dim": [int(w.shape[0]) for _, w in convs], "conv_kernel": [int(w.shape[2]) for _, w in convs],
        "conv_stride": [int(s) for s in strides],
        "conv_bias": "feature_extractor.conv_layers.0.conv.bias" in sd,
        "feat_proj_layer_norm": "feature_projection.layer_norm.weight" in sd,
        "num_conv_pos_embeddings": int(v.shape[2]),
        "num_conv_pos_embedding_groups": d // max(1, int(v.shape[1])),
        "layer_norm_eps": float(overrides.get("layer_norm_eps", BASE_CONFIG["layer_norm_eps"])),
        "vocab_sizes": [], "n_classes": None,
    }
    cfg.update(_heads_from_tensors(sd, source))
    cfg["decimate"] = _decimate(cfg["conv_stride"], source)
    return cfg


def _check_overrides(overrides: dict[str, Any], has_config: bool, source: str) -> dict[str, Any]:
    allowed = ALWAYS_OVERRIDABLE + (() if has_config else SHAPELESS_FIELDS)
    bad = sorted(set(overrides) - set(allowed))
    if bad:
        what = "stores its config, so only these can be set" if has_config else "accepts"
        raise CheckpointError(f"{source}: cannot set {', '.join(bad)} (this HuBERT-ECG file {what}: "
                              f"{', '.join(allowed)})")
    return dict(overrides)


def _build(cfg: dict[str, Any], sd: dict[str, torch.Tensor], source: str, overrides: dict[str, Any]) -> HuBERTECG:
    if "decimate" in overrides:
        cfg["decimate"] = int(overrides["decimate"])
    try:
        cfg = normalise_config(cfg)
        with torch.device("meta"):
            model = HuBERTECG(cfg, contract=_contract())
    except ValueError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    match_state_dict(model.state_dict(), sd, source)
    model = model.to_empty(device="cpu")
    model.load_state_dict({k: v.to(torch.float32) for k, v in sd.items()}, strict=True)
    return model.eval()


def _describe(model: HuBERTECG, sd: dict[str, torch.Tensor]) -> list[str]:
    c = model.config
    n_params = sum(p.numel() for p in model.parameters())
    parts = [f"{c['num_hidden_layers']} layers, width {c['hidden_size']}, {c['num_attention_heads']} heads, "
             f"FFN {c['intermediate_size']}, convs {c['conv_dim']} k{c['conv_kernel']} s{c['conv_stride']}"]
    if c["vocab_sizes"]:
        parts.append(f"pretraining heads: codebooks {c['vocab_sizes']} (proj {c['classifier_proj_size']})")
    if c["n_classes"]:
        parts.append(f"linear classifier, {c['n_classes']} outputs")
    return [f"  HuBERT-ECG: {'; '.join(parts)}",
            f"  input: 12 leads x {model.contract.n_samples} samples at {model.contract.fs:g} Hz, flattened and "
            f"decimated by {c['decimate']} -> {model.input_length()} samples -> {model.output_length()} tokens",
            f"  {len(sd)} tensors loaded ({n_params:,} parameters)"]


@register_importer(IMPORTER_PT, _sniff_pt,
                   "HuBERT-ECG trainer .pt (hubert_ecg_{small,base,large}.pt, fine-tuned .pt)")
def import_pt(path, **overrides) -> tuple[HuBERTECG, list[str]]:
    """Load a HuBERT-ECG ``.pt`` written by the original pretrain.py / finetune.py (or a bare state dict)."""
    path = Path(path)
    source = str(path)
    info = FileInfo(path)
    # the config class may be pickled under any module (hubert_ecg, __main__, ...): stub exactly those
    stubs = set(STUB_MODULES)
    for s in info.strings:
        mod, _, name = s.rpartition(" ")
        if name in CONFIG_CLASSES and mod and re.fullmatch(r"[A-Za-z_][\w.]*", mod):
            stubs.add(mod)
    obj = safe_load(path, stubs=tuple(sorted(stubs)))
    top: dict[str, Any] = {}
    if isinstance(obj, dict) and isinstance(obj.get("model_state_dict"), dict):
        sd = _strip(dict(obj["model_state_dict"]), source)
        fields = _config_fields(obj["model_config"], source) if obj.get("model_config") is not None else None
        for key in ("global_step", "best_val_loss", "best_val_accuracy", "pretraining_vocab_sizes",
                    "finetuning_vocab_size", "linear", "use_label_embedding"):
            if key in obj:
                value = obj[key]
                value = value.item() if hasattr(value, "item") and getattr(value, "ndim", 0) == 0 else value
                if isinstance(value, (int, float, bool, list)):
                    top[key] = value
        if obj.get("use_label_embedding") or obj.get("linear") is False:
            raise CheckpointError(f"{source}: a fine-tuned file with a "
                                  f"{'label-embedding' if obj.get('use_label_embedding') else 'non-linear'} head; "
                                  "ecgtool reads the linear head (finetune.py's default)")
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd, fields = _strip(dict(obj), source), None
    else:
        keys = ", ".join(map(str, list(obj)[:8])) if isinstance(obj, dict) else ""
        raise CheckpointError(f"{source}: no HuBERT-ECG model_state_dict inside (top level {type(obj).__name__}"
                              f"{' keys ' + keys if keys else ''})")
    overrides = _check_overrides(overrides, fields is not None, source)
    cfg = config_from_fields(fields, sd, source) if fields is not None else config_from_tensors(sd, source, overrides)
    model = _build(cfg, sd, source, overrides)
    model.extra["provenance"] = provenance(path, IMPORTER_PT, **{k: v for k, v in top.items()
                                                                  if k in ("global_step", "best_val_loss")})
    lines = [f"read {source} (HuBERT-ECG trainer checkpoint, sha256 {model.extra['provenance']['sha256']})"]
    if top:
        lines.append("  " + ", ".join(f"{k}={v}" for k, v in top.items()))
    if fields is None:
        lines.append("  no model_config: architecture read from tensor shapes")
    return model, lines + _describe(model, sd)


@register_importer(IMPORTER_HF, _sniff_hf,
                   "HuBERT-ECG Hugging Face folder (config.json + model.safetensors) or its model.safetensors")
def import_hf(path, **overrides) -> tuple[HuBERTECG, list[str]]:
    """Load a HuBERT-ECG Hugging Face folder (``Edoardo-BS/hubert-ecg-*``) or a ``model.safetensors`` alone."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    source = str(path)
    fields = None
    if path.is_dir():
        cfg_path = path / "config.json"
        try:
            fields = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{cfg_path}: cannot read the config ({exc})") from None
        if not isinstance(fields, dict):
            raise CheckpointError(f"{cfg_path}: not a JSON object")
        weights = path / "model.safetensors"
        if not weights.is_file():
            weights = path / "pytorch_model.bin"
        if not weights.is_file():
            raise CheckpointError(f"{source}: no model.safetensors (or pytorch_model.bin) beside config.json")
    else:
        weights = path
    wsource = str(weights)
    if weights.suffix == ".bin":
        raw = safe_load(weights)
        if not (isinstance(raw, dict) and all(isinstance(v, torch.Tensor) for v in raw.values())):
            raise CheckpointError(f"{wsource}: not a state dict of tensors")
    else:
        try:
            raw = load_file(str(weights), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{wsource}: cannot read tensors ({exc})",
                                  "the file may be truncated; download it again") from None
    sd = _strip(dict(raw), wsource)
    overrides = _check_overrides(overrides, fields is not None, source)
    cfg = config_from_fields(fields, sd, source) if fields is not None else config_from_tensors(sd, wsource, overrides)
    model = _build(cfg, sd, wsource, overrides)
    prov = provenance(weights, IMPORTER_HF)
    if path.is_dir():
        prov["source"] = f"{path.name}/{weights.name}"
        for key in ("model_type", "transformers_version"):
            if fields.get(key) is not None:
                prov[key] = str(fields[key])
    model.extra["provenance"] = prov
    lines = [f"read {source} (HuBERT-ECG {'Hugging Face folder' if path.is_dir() else 'safetensors'}, "
             f"{weights.name} sha256 {prov['sha256']})"]
    if fields is None:
        lines.append("  no config.json: architecture read from tensor shapes")
    return model, lines + _describe(model, sd)
