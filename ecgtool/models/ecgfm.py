"""ECG-FM: the wav2vec 2.0 style ECG transformer (fairseq-signals layout).

The module tree mirrors the released checkpoints' key names so that the
importer at the end of this module maps them one to one::

    feature_extractor.conv_layers.{i}.0      Conv1d (k, s), no bias by default
    feature_extractor.conv_layers.0.2        GroupNorm(C, C) on the first block only
    layer_norm                               LayerNorm over the conv channels
    post_extract_proj                        Linear C -> D (absent when C == D)
    conv_pos.pos_conv.0                      grouped Conv1d D -> D, even kernel, weight norm (dim 2)
    encoder.layer_norm                       applied *before* the layers (post-LN model)
    encoder.layers.{i}.self_attn.{q,k,v,out}_proj, self_attn_layer_norm, fc1, fc2, final_layer_norm
    mask_emb, quantizer.{vars,weight_proj}, project_q, final_proj   pretraining heads only
    proj                                     classifier head (finetuned models only)

The positional conv keeps its weight norm as a torch parametrization
(``conv_pos.pos_conv.0.parametrizations.weight.original0`` = g ``[1, 1, K]``,
``original1`` = v), so ``w = g * v / ||v||`` with the norm over dims (0, 1),
as in the original, and parameter counts match the released model exactly.

Forward pass (eval mode, no masking)::

    conv = feature_extractor(x)                       (B, C, T')
    f = layer_norm(conv^T)                            (B, T', C)   -> quantizer input
    h = dropout_input(post_extract_proj(f))           (B, T', D)
    h = h + conv_pos(h)                               encoder input
    h[pad] = 0; h = encoder.layer_norm(h); dropout
    h = layers(h)                                     post-LN layers, no final LN
    pooled = h.sum(1) / (h != 0).sum(1)               masked mean over time
    logits = proj(pooled)
"""

from __future__ import annotations

import ast
import math
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ecgtool.errors import CheckpointError
from ecgtool.models.base import ATTENTION, WAV2VEC2_PRETRAINING, EcgModel
from ecgtool.models.card import card
from ecgtool.models.contract import InputContract
from ecgtool.models.registry import refuse_overrides, register_family, register_importer, register_model
from ecgtool.models.serial import provenance, safe_load

FAMILY = "ecgfm"

CONTRACT = card("ecgfm-base").contract

# The released base configuration (fairseq-signals w2v_cmsc_rlm pretraining).
BASE_CONFIG: dict[str, Any] = {
    "conv_feature_layers": "[(256, 2, 2)] * 4",
    "in_d": 12,
    "conv_bias": False,
    "extractor_mode": "default",
    "encoder_layers": 12,
    "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12,
    "layer_norm_first": False,
    "conv_pos": 128,
    "conv_pos_groups": 16,
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "activation_dropout": 0.0,
    "encoder_layerdrop": 0.0,
    "dropout_input": 0.1,
    "dropout_features": 0.1,
    "final_dropout": 0.0,
    "feature_grad_mult": 0.1,
    # pretraining heads (built only when ``pretraining`` is true)
    "pretraining": True,
    "latent_vars": 320,
    "latent_groups": 2,
    "latent_dim": 0,
    "final_dim": 256,
    "latent_temp": [2.0, 0.5, 0.999995],
    "logit_temp": 0.1,
    # classifier head (built when ``num_labels`` is set)
    "num_labels": None,
}

_ALLOWED_KEYS = set(BASE_CONFIG)

# Dropouts of fairseq-signals' finetuning configs (diagnosis.yaml), used for a new classifier.
FINETUNE_DROPOUTS = {"dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.1, "final_dropout": 0.0,
                     "dropout_input": 0.0, "dropout_features": 0.0, "encoder_layerdrop": 0.0}


# ----------------------------------------------------------------------------
# configuration


def parse_conv_layers(spec: str | Sequence) -> list[tuple[int, int, int]]:
    """Parse a fairseq ``conv_feature_layers`` string without ``eval``.

    Accepts list/tuple literals of integers combined with ``+`` and ``*``,
    e.g. ``"[(256, 2, 2)] * 4"`` or ``"[(512, 10, 5)] + [(512, 3, 2)] * 4"``.
    Returns a list of ``(channels, kernel, stride)``.
    """
    if not isinstance(spec, str):
        layers = [tuple(int(v) for v in t) for t in spec]
    else:
        try:
            tree = ast.parse(spec.strip(), mode="eval")
            value = _literal(tree.body)
        except (SyntaxError, ValueError, TypeError, RecursionError) as e:
            raise ValueError(f"conv_feature_layers {spec!r} is not a list of (dim, kernel, stride): {e}") from None
        if not isinstance(value, list):
            raise ValueError(f"conv_feature_layers {spec!r} is not a list")
        layers = value
    out = []
    for t in layers:
        if not (isinstance(t, tuple) and len(t) == 3 and all(isinstance(v, int) and v > 0 for v in t)):
            raise ValueError(f"conv_feature_layers entry {t!r} is not (dim, kernel, stride) with positive ints")
        out.append(t)
    if not out:
        raise ValueError("conv_feature_layers is empty")
    return out


def _literal(node: ast.AST):
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.List):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_literal(e) for e in node.elts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
        a, b = _literal(node.left), _literal(node.right)
        if isinstance(node.op, ast.Add):
            if type(a) is not type(b) or not isinstance(a, (list, tuple, int)):
                raise TypeError("'+' needs two lists, two tuples or two ints")
            return a + b
        if isinstance(a, int) and isinstance(b, (list, tuple)):
            a, b = b, a
        if not isinstance(b, int) or b < 0 or b > 10_000:
            raise TypeError("'*' needs a list and a small non-negative int")
        if isinstance(a, (list, tuple)) and len(a) * b > 100_000:
            raise TypeError("repetition too long")
        return a * b
    raise ValueError(f"unsupported expression {ast.dump(node)[:60]}")


def normalise_config(config: dict[str, Any] | None = None, **overrides) -> dict[str, Any]:
    """Fill defaults from :data:`BASE_CONFIG`, check values, return a JSON-able dict."""
    cfg = dict(BASE_CONFIG)
    for src in (config or {}), overrides:
        for k, v in src.items():
            if k not in _ALLOWED_KEYS:
                raise ValueError(f"unknown ECG-FM config key {k!r}")
            cfg[k] = v
    layers = parse_conv_layers(cfg["conv_feature_layers"])
    if not isinstance(cfg["conv_feature_layers"], str):
        cfg["conv_feature_layers"] = repr([tuple(t) for t in layers])
    if cfg["extractor_mode"] != "default":
        raise ValueError(f"extractor_mode {cfg['extractor_mode']!r} is not supported (only 'default')")
    if cfg["layer_norm_first"]:
        raise ValueError("layer_norm_first=True (pre-LN) is not supported; ECG-FM is post-LN")
    d, h = int(cfg["encoder_embed_dim"]), int(cfg["encoder_attention_heads"])
    if d % h:
        raise ValueError(f"encoder_embed_dim {d} is not divisible by {h} heads")
    if d % int(cfg["conv_pos_groups"]):
        raise ValueError(f"encoder_embed_dim {d} is not divisible by conv_pos_groups {cfg['conv_pos_groups']}")
    if cfg["pretraining"]:
        vq = _vq_dim(cfg)
        if vq % int(cfg["latent_groups"]):
            raise ValueError(f"quantizer dim {vq} is not divisible by latent_groups {cfg['latent_groups']}")
    if cfg["num_labels"] is not None:
        cfg["num_labels"] = int(cfg["num_labels"])
        if cfg["num_labels"] < 1:
            raise ValueError("num_labels must be >= 1")
    cfg["latent_temp"] = [float(v) for v in cfg["latent_temp"]]
    for k in ("in_d", "encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim", "encoder_attention_heads",
              "conv_pos", "conv_pos_groups", "latent_vars", "latent_groups", "latent_dim", "final_dim"):
        cfg[k] = int(cfg[k])
    for k in ("dropout", "attention_dropout", "activation_dropout", "encoder_layerdrop", "dropout_input",
              "dropout_features", "final_dropout", "feature_grad_mult", "logit_temp"):
        cfg[k] = float(cfg[k])
    cfg["conv_bias"] = bool(cfg["conv_bias"])
    cfg["pretraining"] = bool(cfg["pretraining"])
    return cfg


def _final_dim(cfg) -> int:
    return int(cfg["final_dim"]) if int(cfg["final_dim"]) > 0 else int(cfg["encoder_embed_dim"])


def _vq_dim(cfg) -> int:
    return int(cfg["latent_dim"]) if int(cfg["latent_dim"]) > 0 else _final_dim(cfg)


# ----------------------------------------------------------------------------
# modules


class _GradMultiply(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


class ConvFeatureExtractor(nn.Module):
    """Strided conv stack; block 0 has GroupNorm(C, C) (extractor_mode 'default')."""

    def __init__(self, layers: list[tuple[int, int, int]], in_d: int, conv_bias: bool, dropout: float = 0.0):
        super().__init__()
        self.spec = layers
        blocks = []
        c_in = in_d
        for i, (c, k, s) in enumerate(layers):
            mods = [nn.Conv1d(c_in, c, k, stride=s, bias=conv_bias), nn.Dropout(dropout)]
            if i == 0:
                mods.append(nn.GroupNorm(c, c, affine=True))
            mods.append(nn.GELU())
            blocks.append(nn.Sequential(*mods))
            c_in = c
        self.conv_layers = nn.ModuleList(blocks)
        self.out_dim = c_in

    def output_length(self, n: torch.Tensor | int):
        for _, k, s in self.spec:
            n = (n - k) // s + 1
        return n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.conv_layers:
            if isinstance(block[2], nn.GroupNorm):
                x = block[1](block[0](x))
                x = F.group_norm(x.float(), block[2].num_groups, block[2].weight.float(),
                                 block[2].bias.float(), block[2].eps).type_as(x)
                x = block[3](x)
            else:
                x = block(x)
        return x


class SamePad(nn.Module):
    """Drop the last time step after an even-kernel conv padded by k//2."""

    def __init__(self, kernel_size: int):
        super().__init__()
        self.remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x):
        return x[:, :, :-self.remove] if self.remove else x


class ConvPositional(nn.Module):
    """Relative positional embedding: weight-normed grouped conv + SamePad + GELU (returns conv_pos(x))."""

    def __init__(self, dim: int, kernel: int, groups: int):
        super().__init__()
        conv = nn.Conv1d(dim, dim, kernel_size=kernel, padding=kernel // 2, groups=groups)
        std = math.sqrt(4 / (kernel * dim))
        nn.init.normal_(conv.weight, mean=0, std=std)
        nn.init.constant_(conv.bias, 0)
        conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.pos_conv = nn.Sequential(conv, SamePad(kernel), nn.GELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        return self.pos_conv(x.transpose(1, 2)).transpose(1, 2)


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v/out projections (scaling head_dim^-0.5).

    Without ``need_weights`` it runs ``F.scaled_dot_product_attention``; with it, an
    explicit softmax that also returns the head-averaged weights. ``use_sdpa = False``
    (class or instance attribute) forces the explicit path everywhere (debugging, benchmarks).
    """

    use_sdpa = True

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scaling = self.head_dim ** -0.5
        self.dropout = dropout
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        gain = 1 / math.sqrt(2)
        for lin in (self.k_proj, self.v_proj, self.q_proj):
            nn.init.xavier_uniform_(lin.weight, gain=gain)
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.constant_(self.out_proj.bias, 0.0)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T, D); key_padding_mask (B, T) True at padding. Returns (out, head-averaged weights or None)."""
        b, t, d = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights or not self.use_sdpa:
            scores = torch.matmul(q * self.scaling, k.transpose(-1, -2))
            if key_padding_mask is not None:
                scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
            probs = torch.softmax(scores.float(), dim=-1).type_as(scores)
            weights = probs.mean(dim=1) if need_weights else None
            out = torch.matmul(F.dropout(probs, p=p, training=self.training), v)
        else:
            mask = None
            if key_padding_mask is not None:
                mask = ~key_padding_mask[:, None, None, :]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, scale=self.scaling)
        out = out.transpose(1, 2).reshape(b, t, d)
        return self.out_proj(out), weights


class EncoderLayer(nn.Module):
    """Post-LN transformer layer: x = LN1(x + MHA(x)); x = LN2(x + fc2(gelu(fc1(x))))."""

    def __init__(self, dim: int, ffn: int, heads: int, dropout: float, attention_dropout: float,
                 activation_dropout: float):
        super().__init__()
        self.self_attn = SelfAttention(dim, heads, attention_dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(activation_dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn)
        self.fc2 = nn.Linear(ffn, dim)
        self.final_layer_norm = nn.LayerNorm(dim)

    def forward(self, x, key_padding_mask=None, need_weights=False):
        # Without autograd the residual adds and the GELU write into the fresh projection outputs
        # (the same values): fewer large buffers allocated per layer, and on the CPU each new large
        # buffer costs page faults (it was ~5% of the fp32 forward at batch 16).
        inplace = not torch.is_grad_enabled()
        y, attn = self.self_attn(x, key_padding_mask, need_weights)
        x = self.self_attn_layer_norm(_residual(x, self.dropout1(y), inplace))
        h = self.fc1(x)
        h = torch.ops.aten.gelu_(h) if inplace else F.gelu(h)
        y = self.fc2(self.dropout2(h))
        x = self.final_layer_norm(_residual(x, self.dropout3(y), inplace))
        return x, attn


def _residual(x: torch.Tensor, y: torch.Tensor, inplace: bool) -> torch.Tensor:
    """``x + y``, into ``y``'s buffer when ``inplace`` and the dtypes agree (under autocast they may not)."""
    return y.add_(x) if inplace and y.dtype == x.dtype else x + y


class TransformerEncoder(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        d = cfg["encoder_embed_dim"]
        self.layer_norm = nn.LayerNorm(d)
        self.dropout = nn.Dropout(cfg["dropout"])
        self.layerdrop = cfg["encoder_layerdrop"]
        self.layers = nn.ModuleList([
            EncoderLayer(d, cfg["encoder_ffn_embed_dim"], cfg["encoder_attention_heads"], cfg["dropout"],
                         cfg["attention_dropout"], cfg["activation_dropout"])
            for _ in range(cfg["encoder_layers"])])

    def forward(self, x, padding_mask=None, last_layer: int | None = None, attn_layer: int | None = None):
        """Run layers 0..last_layer (default all). Returns (x, attention of ``attn_layer`` or None)."""
        if padding_mask is not None:
            x = x.masked_fill(padding_mask[..., None], 0.0)
        x = self.dropout(self.layer_norm(x))
        n = len(self.layers) if last_layer is None else last_layer + 1
        attn = None
        for i in range(n):
            want = attn_layer == i
            if self.training and self.layerdrop > 0 and not want and torch.rand(()) < self.layerdrop:
                continue
            x, a = self.layers[i](x, padding_mask, need_weights=want)
            if want:
                attn = a
        return x, attn


class GumbelQuantizer(nn.Module):
    """Gumbel-softmax product quantizer (``vars`` [1, G*V, vq_dim/G], ``weight_proj`` C -> G*V).

    ``forward(f)`` with ``f`` (B, T, C) returns a dict: ``x`` quantized (B, T, vq_dim),
    ``prob_perplexity`` (differentiable, for the diversity loss ``(G*V - ppl) / (G*V)``),
    ``code_perplexity``, ``temp``, ``num_vars`` (= G*V). Training uses hard Gumbel
    samples at temperature :attr:`curr_temp`; eval uses the argmax code.
    """

    def __init__(self, dim: int, num_vars: int, temp: Sequence[float], groups: int, vq_dim: int):
        super().__init__()
        self.groups = groups
        self.num_vars = num_vars
        self.vars = nn.Parameter(torch.empty(1, groups * num_vars, vq_dim // groups))
        nn.init.uniform_(self.vars)
        self.weight_proj = nn.Linear(dim, groups * num_vars)
        nn.init.normal_(self.weight_proj.weight, mean=0, std=1)
        nn.init.zeros_(self.weight_proj.bias)
        self.max_temp, self.min_temp, self.temp_decay = (float(v) for v in temp)
        self.curr_temp = self.max_temp

    def set_num_updates(self, num_updates: int) -> None:
        self.curr_temp = max(self.max_temp * self.temp_decay ** num_updates, self.min_temp)

    def forward(self, f: torch.Tensor) -> dict[str, Any]:
        b, t, c = f.shape
        logits = self.weight_proj(f.reshape(-1, c)).view(b * t * self.groups, -1)
        k = logits.argmax(-1)
        hard = torch.zeros_like(logits).scatter_(-1, k.view(-1, 1), 1.0).view(b * t, self.groups, -1)
        hard_probs = hard.float().mean(dim=0)
        code_ppl = torch.exp(-(hard_probs * torch.log(hard_probs + 1e-7)).sum(-1)).sum()
        avg_probs = torch.softmax(logits.view(b * t, self.groups, -1).float(), dim=-1).mean(dim=0)
        prob_ppl = torch.exp(-(avg_probs * torch.log(avg_probs + 1e-7)).sum(-1)).sum()
        if self.training:
            onehot = F.gumbel_softmax(logits.float(), tau=self.curr_temp, hard=True).type_as(logits)
        else:
            onehot = hard
        onehot = onehot.reshape(b * t, -1)
        q = (onehot.unsqueeze(-1) * self.vars).view(b * t, self.groups, self.num_vars, -1).sum(-2)
        return {"x": q.view(b, t, -1), "prob_perplexity": prob_ppl, "code_perplexity": code_ppl,
                "temp": self.curr_temp, "num_vars": self.num_vars * self.groups, "targets": k.view(b, t, -1)}


# ----------------------------------------------------------------------------
# the model


@register_family
class EcgFm(EcgModel):
    """ECG-FM transformer (see the module docstring for the layout) behind the model interface.

    Pretraining pieces (capability ``wav2vec2``): :meth:`extract`, :meth:`apply_mask`,
    :meth:`encode`, :meth:`quantize`, :meth:`forward_pretrain`, :meth:`set_num_updates`.
    """

    family = FAMILY
    head_name = "proj"
    capabilities = frozenset({ATTENTION, WAV2VEC2_PRETRAINING})

    def __init__(self, config: dict[str, Any] | None = None, contract: InputContract | None = None,
                 label_names: Sequence[str] | None = None):
        cfg = normalise_config(config)
        if label_names is not None:
            label_names = [str(n) for n in label_names]
            if cfg["num_labels"] is None:
                cfg["num_labels"] = len(label_names)
            elif len(label_names) != cfg["num_labels"]:
                raise ValueError(f"{len(label_names)} label names for {cfg['num_labels']} outputs")
        contract = contract or (CONTRACT if cfg["in_d"] == 12 else InputContract(
            fs=500.0, leads=tuple(f"ch{i}" for i in range(cfg["in_d"])), n_samples=2500,
            normalisation="per-lead-zscore", preset=None))
        super().__init__(cfg, contract, label_names)
        if len(self.contract.leads) != cfg["in_d"]:
            raise ValueError(f"contract has {len(self.contract.leads)} leads but the model takes {cfg['in_d']}")

        d = cfg["encoder_embed_dim"]
        self.feature_extractor = ConvFeatureExtractor(parse_conv_layers(cfg["conv_feature_layers"]), cfg["in_d"],
                                                      cfg["conv_bias"])
        c = self.feature_extractor.out_dim
        self.layer_norm = nn.LayerNorm(c)
        self.post_extract_proj = nn.Linear(c, d) if c != d else None
        self.dropout_input = nn.Dropout(cfg["dropout_input"])
        self.dropout_features = nn.Dropout(cfg["dropout_features"])
        self.conv_pos = ConvPositional(d, cfg["conv_pos"], cfg["conv_pos_groups"])
        self.encoder = TransformerEncoder(cfg)
        self._init_encoder()

        if cfg["pretraining"]:
            fd, vq = _final_dim(cfg), _vq_dim(cfg)
            self.mask_emb = nn.Parameter(torch.empty(d).uniform_())
            self.quantizer = GumbelQuantizer(c, cfg["latent_vars"], cfg["latent_temp"], cfg["latent_groups"], vq)
            self.project_q = nn.Linear(vq, fd)
            self.final_proj = nn.Linear(d, fd)
        else:
            self.mask_emb = None
            self.quantizer = self.project_q = self.final_proj = None

        self.final_dropout = nn.Dropout(cfg["final_dropout"])
        self.proj = self.make_classifier(cfg["num_labels"]) if cfg["num_labels"] is not None else None

    def _init_encoder(self) -> None:
        for layer in self.encoder.layers:
            for lin in (layer.fc1, layer.fc2):
                nn.init.normal_(lin.weight, mean=0.0, std=0.02)
                nn.init.zeros_(lin.bias)

    # -- the model interface -------------------------------------------------

    def layer_modules(self) -> list[nn.Module]:
        return list(self.encoder.layers)

    def input_modules(self) -> list[nn.Module]:
        return [self.feature_extractor]

    def classifier_config(self, n_labels: int | None) -> dict[str, Any]:
        return {**self.config, "num_labels": n_labels}

    def finetune_config(self, n_labels: int) -> dict[str, Any]:
        """A classifier without the pretraining heads, with fairseq-signals' finetuning dropouts."""
        return {**self.config, "num_labels": n_labels, "pretraining": False, **FINETUNE_DROPOUTS}

    def make_classifier(self, n_labels: int) -> nn.Module:
        proj = nn.Linear(int(self.config["encoder_embed_dim"]), n_labels)
        nn.init.xavier_uniform_(proj.weight)
        nn.init.constant_(proj.bias, 0.0)
        return proj

    def head_input(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.final_dropout(self.embed(x, padding_mask))

    def on_freeze(self, mode: str) -> None:
        # frozen features: the conv extractor runs under no_grad, as fairseq-signals' feature_grad_mult 0
        if mode == "frozen-features":
            self.config["feature_grad_mult"] = 0.0
        elif mode == "full":
            self.config["feature_grad_mult"] = 1.0

    # -- bookkeeping --------------------------------------------------------

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def output_length(self, n_samples: int) -> int:
        """Frames produced for ``n_samples`` input samples (156 for 2500)."""
        return int(self.feature_extractor.output_length(n_samples))

    def frame_padding_mask(self, padding_mask: torch.Tensor | None, n_frames: int) -> torch.Tensor | None:
        """Bring a padding mask (True = padding) to frame resolution.

        Accepts a sample-level mask (B, n_samples) or a frame-level one (B, n_frames).
        A frame is padding when it lies past the last valid sample's frame.
        """
        if padding_mask is None:
            return None
        padding_mask = padding_mask.bool()
        if padding_mask.shape[-1] == n_frames:
            return padding_mask
        lengths = (~padding_mask).long().sum(-1)
        out = self.feature_extractor.output_length(lengths).clamp(min=0)
        return torch.arange(n_frames, device=padding_mask.device)[None, :] >= out[:, None]

    # -- pretraining pieces -------------------------------------------------

    def set_num_updates(self, num_updates: int) -> None:
        """Anneal the Gumbel temperature: max(t_max * decay**updates, t_min)."""
        if self.quantizer is not None:
            self.quantizer.set_num_updates(num_updates)

    def conv_features(self, x: torch.Tensor) -> torch.Tensor:
        """Conv feature extractor output (B, C, T'), before LayerNorm.

        In training mode the gradient into the extractor is scaled by
        ``feature_grad_mult`` (0 runs it under ``no_grad``, as in finetuning).
        """
        mult = self.config["feature_grad_mult"]
        if self.training and mult == 0.0:
            with torch.no_grad():
                return self.feature_extractor(x)
        f = self.feature_extractor(x)
        if self.training and mult != 1.0 and f.requires_grad:
            f = _GradMultiply.apply(f, mult)
        return f

    def extract(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor | None]:
        """Local features before the transformer.

        Returns ``features`` (B, T', C): LayerNorm'd conv features after
        ``dropout_features`` (the quantizer's input / unmasked targets);
        ``x`` (B, T', D): projected features after ``dropout_input`` (the
        input to masking and ``encode``); ``features_pen``: mean(conv**2) (the
        feature penalty); ``padding_mask`` (B, T') or None.
        """
        conv = self.conv_features(x)
        pen = conv.float().pow(2).mean()
        f = self.layer_norm(conv.transpose(1, 2))
        h = self.post_extract_proj(f) if self.post_extract_proj is not None else f
        h = self.dropout_input(h)
        return {"features": self.dropout_features(f), "x": h, "features_pen": pen,
                "padding_mask": self.frame_padding_mask(padding_mask, f.shape[1])}

    def apply_mask(self, x: torch.Tensor, mask_indices: torch.Tensor) -> torch.Tensor:
        """Replace frames where ``mask_indices`` (B, T' bool) is True by ``mask_emb``."""
        if self.mask_emb is None:
            raise RuntimeError("this ECG-FM model has no mask_emb (build it with pretraining=True)")
        return torch.where(mask_indices[..., None], self.mask_emb.to(x.dtype), x)

    def encode(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None, last_layer: int | None = None,
               attn_layer: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """conv_pos + transformer on projected features ``x`` (B, T', D).

        ``padding_mask`` is frame-level (B, T'). Returns (output of ``last_layer``
        (default: the final layer), head-averaged attention of ``attn_layer`` or None).
        """
        x = x + self.conv_pos(x)
        return self.encoder(x, padding_mask, last_layer=last_layer, attn_layer=attn_layer)

    def quantize(self, features: torch.Tensor) -> dict[str, Any]:
        """Gumbel-quantize LayerNorm'd conv features (B, T, C); see :class:`GumbelQuantizer`."""
        if self.quantizer is None:
            raise RuntimeError("this ECG-FM model has no quantizer (build it with pretraining=True)")
        return self.quantizer(features)

    def forward_pretrain(self, x: torch.Tensor, mask_indices: torch.Tensor | None,
                         padding_mask: torch.Tensor | None = None) -> dict[str, Any]:
        """The wav2vec 2.0 forward with given span masks; losses are computed by the caller.

        ``mask_indices`` (B, T') bool, True where a frame is masked (or None: no
        masking, e.g. for CMSC-only views). Returns a dict:

        - ``encoder_out`` (B, T', D): transformer output of the masked input
          (mean-pool it with :meth:`pool` for CMSC);
        - ``padding_mask`` (B, T') or None;
        - ``x`` (M, F): ``final_proj`` of the encoder output at masked frames
          (M = number of masked frames, in row-major order);
        - ``y`` (M, F): ``project_q`` of the quantized unmasked features at the
          same frames (the positives; draw negatives from them per sample);
        - ``mask_counts`` (B,): masked frames per sample (to split ``x``/``y``);
        - ``prob_perplexity``, ``code_perplexity``, ``temp``, ``num_vars`` from the quantizer;
        - ``features_pen``: mean of the squared conv features.
        """
        e = self.extract(x, padding_mask)
        h = e["x"]
        if mask_indices is not None:
            h = self.apply_mask(h, mask_indices)
        out, _ = self.encode(h, e["padding_mask"])
        result: dict[str, Any] = {"encoder_out": out, "padding_mask": e["padding_mask"],
                                  "features_pen": e["features_pen"]}
        if mask_indices is not None and self.quantizer is not None:
            q = self.quantize(e["features"][mask_indices][None])
            result["y"] = self.project_q(q["x"][0])
            result["x"] = self.final_proj(out[mask_indices])
            result["mask_counts"] = mask_indices.sum(-1)
            for k in ("prob_perplexity", "code_perplexity", "temp", "num_vars"):
                result[k] = q[k]
        return result

    # -- features ------------------------------------------------------------

    def feature_dim(self, layer: int | None = None) -> int:
        """Width D of :meth:`features` (every transformer layer has the same); checks ``layer``."""
        self.layer_index(layer)
        return int(self.config["encoder_embed_dim"])

    def features(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None,
                 layer: int | None = None) -> torch.Tensor:
        """Per-frame features (B, T', D) of the final layer, or of transformer layer ``layer`` (0-based)."""
        e = self.extract(x, padding_mask)
        out, _ = self.encode(e["x"], e["padding_mask"], last_layer=self.layer_index(layer))
        return out

    def pool(self, feats: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Masked mean over time: padded frames set to 0, then ``x.sum(1) / (x != 0).sum(1)``."""
        pm = self.frame_padding_mask(padding_mask, feats.shape[1])
        if pm is not None:
            feats = feats.masked_fill(pm[..., None], 0.0)
        return feats.sum(1) / (feats != 0).sum(1).clamp(min=1).to(feats.dtype)

    def attention(self, x: torch.Tensor, layer: int = -1, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Head-averaged attention weights (B, T', T') of transformer layer ``layer`` (saliency)."""
        i = self.layer_index(layer)
        e = self.extract(x, padding_mask)
        _, attn = self.encode(e["x"], e["padding_mask"], last_layer=i, attn_layer=i)
        return attn


# ----------------------------------------------------------------------------
# registered variants


def _variant(base: dict[str, Any], overrides: dict[str, Any]) -> EcgFm:
    """``pretraining`` defaults to True (the released configuration, with heads)
    unless ``num_labels`` is given, in which case it defaults to False (a classifier)."""
    overrides = dict(overrides)
    contract = overrides.pop("contract", None)
    labels = overrides.pop("label_names", None)
    device = overrides.pop("device", None)
    if "pretraining" not in overrides and (overrides.get("num_labels") is not None or labels is not None):
        overrides["pretraining"] = False
    cfg = dict(base)
    cfg.update(overrides)
    if device is not None:
        with torch.device(device):
            return EcgFm(cfg, contract=contract, label_names=labels)
    return EcgFm(cfg, contract=contract, label_names=labels)


@register_model("ecgfm-base")
def ecgfm_base(**overrides) -> EcgFm:
    return _variant({}, overrides)


@register_model("ecgfm-large")
def ecgfm_large(**overrides) -> EcgFm:
    return _variant({"encoder_layers": 24, "encoder_embed_dim": 1024, "encoder_ffn_embed_dim": 4096,
                     "encoder_attention_heads": 16}, overrides)


@register_model("ecgfm-small")
def ecgfm_small(**overrides) -> EcgFm:
    return _variant({"conv_feature_layers": "[(128, 2, 2)] * 4", "encoder_layers": 4, "encoder_embed_dim": 256,
                     "encoder_ffn_embed_dim": 1024, "encoder_attention_heads": 4, "conv_pos": 64,
                     "conv_pos_groups": 16, "latent_vars": 64, "final_dim": 128}, overrides)


@register_model("ecgfm-tiny")
def ecgfm_tiny(**overrides) -> EcgFm:
    return _variant({"conv_feature_layers": "[(32, 2, 2)] * 4", "encoder_layers": 2, "encoder_embed_dim": 64,
                     "encoder_ffn_embed_dim": 128, "encoder_attention_heads": 4, "conv_pos": 16,
                     "conv_pos_groups": 4, "latent_vars": 8, "final_dim": 48}, overrides)


# ECG-FM mini (ecgtool's default model before the Net1D one): a compact input
# (100 Hz, 12 leads, 5 s windows, per-lead z-score, missing leads zero-filled). The conv stack suits 100 Hz: a stride-1 block
# over 50 ms, then two stride-2 blocks -> 123 frames per 500 samples (25 Hz,
# close to ECG-FM's 31 Hz at 500 Hz), so mask spans of 10 frames cover 0.4 s.
MINI_CONTRACT = card("ecgfm-mini").contract


@register_model("ecgfm-mini")
def ecgfm_mini(**overrides) -> EcgFm:
    overrides.setdefault("contract", MINI_CONTRACT)
    return _variant({"conv_feature_layers": "[(128, 5, 1), (256, 3, 2), (256, 3, 2)]", "encoder_layers": 4,
                     "encoder_embed_dim": 256, "encoder_ffn_embed_dim": 1024, "encoder_attention_heads": 4,
                     "conv_pos": 64, "conv_pos_groups": 16, "latent_vars": 160, "final_dim": 128}, overrides)


# ----------------------------------------------------------------------------
# released fairseq-signals checkpoints (.pt)
#
# A fairseq-signals checkpoint is a torch zip-pickle with top-level keys ``cfg``
# (plain dict; ``cfg['model']`` holds the architecture), ``model`` (the state
# dict), ``optimizer_history``, ``extra_state`` and so on; it is read with
# :func:`ecgtool.models.serial.safe_load` (finetuned files also hold numpy
# arrays: AUROC meter state). Key mapping (explicit, every tensor accounted for):
#
# - pretraining models (``wav2vec2_cmsc``, ``wav2vec2``, ...): keys as above, the
#   pos-conv weight norm as ``weight_g``/``weight_v`` (the released files) or
#   ``parametrizations.weight.original0``/``original1`` (fairseq-signals after 2025-01);
# - finetuned classifiers (``ecg_transformer_classifier``): the same keys
#   prefixed with ``encoder.``, plus ``proj.weight``/``proj.bias``.

import os  # noqa: E402

IMPORTER = "fairseq-signals-pt"

# cfg['model'] keys carried over into our config.
_CFG_KEYS = ("conv_feature_layers", "in_d", "conv_bias", "extractor_mode", "encoder_layers", "encoder_embed_dim",
             "encoder_ffn_embed_dim", "encoder_attention_heads", "layer_norm_first", "conv_pos", "conv_pos_groups",
             "dropout", "attention_dropout", "activation_dropout", "encoder_layerdrop", "dropout_input",
             "dropout_features", "final_dropout", "feature_grad_mult", "latent_vars", "latent_groups", "latent_dim",
             "final_dim", "latent_temp", "logit_temp", "num_labels")

# Options the model does not implement; a checkpoint that turns one on is refused.
_UNSUPPORTED = {"quantize_input": False, "same_quantizer": False, "target_glu": False, "layer_norm_first": False,
                "extractor_mode": "default"}

_POS = "conv_pos.pos_conv.0."
_WN_OLD = (_POS + "weight_g", _POS + "weight_v")
_WN_NEW = (_POS + "parametrizations.weight.original0", _POS + "parametrizations.weight.original1")

_MAX_PROBLEMS = 20


def _first_line(s: str) -> str:
    s = s.strip().splitlines()[0] if s.strip() else ""
    return s[:200]


def is_fairseq_checkpoint(obj: Any) -> bool:
    """True if ``obj`` (a loaded top-level dict) is a fairseq(-signals) checkpoint with an ECG-FM model."""
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict):
        return False
    cfg = obj.get("cfg")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
        return False
    return "_name" in cfg["model"] and "encoder_embed_dim" in cfg["model"]


def fairseq_provenance(state: dict, path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Provenance of a fairseq checkpoint: source file and sha256, model name, updates, criterion."""
    cfg_model = (state.get("cfg") or {}).get("model") or {}
    hist = state.get("optimizer_history") or []
    last = hist[-1] if hist and isinstance(hist[-1], dict) else {}
    prov: dict[str, Any] = {
        "format": "fairseq-signals",
        "fairseq_model": cfg_model.get("_name"),
        "num_updates": last.get("num_updates"),
        "criterion": last.get("criterion_name"),
    }
    return prov


# ----------------------------------------------------------------------------
# config and key mapping


def _layout(cfg_model: dict) -> str:
    name = str(cfg_model.get("_name", ""))
    if name.endswith("_classifier") or cfg_model.get("num_labels") is not None:
        return "classifier"
    if name.startswith("wav2vec2") or cfg_model.get("quantize_targets"):
        return "pretraining"
    return "encoder"


def config_from_fairseq(cfg_model: dict, name: str = "checkpoint") -> dict[str, Any]:
    """Our ECG-FM config from a checkpoint's ``cfg['model']`` (every architecture field from the file)."""
    if not isinstance(cfg_model, dict):
        raise CheckpointError(f"{name}: cfg['model'] is not a dict")
    for k, ok in _UNSUPPORTED.items():
        if k in cfg_model and cfg_model[k] != ok:
            raise CheckpointError(f"{name}: cfg['model'].{k}={cfg_model[k]!r} is not supported (ECG-FM uses {ok!r})")
    layout = _layout(cfg_model)
    if layout == "pretraining" and not cfg_model.get("quantize_targets", True):
        raise CheckpointError(f"{name}: pretraining checkpoint without quantize_targets is not supported")
    required = ("conv_feature_layers", "encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim",
                "encoder_attention_heads", "conv_pos", "conv_pos_groups")
    missing = [k for k in required if k not in cfg_model]
    if missing:
        raise CheckpointError(f"{name}: cfg['model'] lacks {', '.join(missing)}; cannot tell the architecture")
    cfg = {k: cfg_model[k] for k in _CFG_KEYS if k in cfg_model and cfg_model[k] is not None}
    cfg.setdefault("in_d", BASE_CONFIG["in_d"])
    cfg["pretraining"] = layout == "pretraining"
    if layout == "classifier":
        cfg["num_labels"] = cfg_model.get("num_labels")
    else:
        cfg["num_labels"] = None
    try:
        parse_conv_layers(cfg["conv_feature_layers"])
    except ValueError as e:
        raise CheckpointError(f"{name}: {e}") from None
    return cfg


def expected_keys(config: dict[str, Any], layout: str = "pretraining", weight_norm: str = "g_v",
                  num_labels: int | None = None) -> dict[str, tuple[int, ...]]:
    """The fairseq state-dict keys and shapes a checkpoint of ``config`` must hold.

    ``layout``: ``pretraining`` (with mask_emb/quantizer/project_q/final_proj),
    ``encoder`` or ``classifier`` (prefix ``encoder.`` plus ``proj.*``).
    ``weight_norm``: ``g_v`` (``weight_g``/``weight_v``) or ``parametrizations``.
    Built on the meta device, so full-size configs cost nothing.
    """
    cfg = dict(config)
    cfg["pretraining"] = layout == "pretraining"
    cfg["num_labels"] = (num_labels or cfg.get("num_labels")) if layout == "classifier" else None
    if layout == "classifier" and not cfg["num_labels"]:
        raise ValueError("classifier layout needs num_labels")
    with torch.device("meta"):
        model = EcgFm(cfg)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return {_to_fairseq_key(k, layout, weight_norm): s for k, s in ours.items()}


def _to_fairseq_key(k: str, layout: str, weight_norm: str) -> str:
    if weight_norm == "g_v":
        if k == _WN_NEW[0]:
            k = _WN_OLD[0]
        elif k == _WN_NEW[1]:
            k = _WN_OLD[1]
    if layout == "classifier" and not k.startswith("proj."):
        k = "encoder." + k
    return k


def _from_fairseq_key(k: str, layout: str) -> str:
    if layout == "classifier" and k.startswith("encoder."):
        k = k[len("encoder."):]
    if k == _WN_OLD[0]:
        return _WN_NEW[0]
    if k == _WN_OLD[1]:
        return _WN_NEW[1]
    return k


def convert_state_dict(sd: dict, config: dict[str, Any], layout: str, name: str = "checkpoint") -> dict:
    """Map a fairseq state dict to ours; raise one CheckpointError listing every missing,
    unexpected and mis-shaped key (no partial loads)."""
    if not isinstance(sd, dict):
        raise CheckpointError(f"{name}: 'model' is not a state dict")
    style = "parametrizations" if any(k.endswith(_WN_NEW[0]) for k in sd) else "g_v"
    want = expected_keys(config, layout, style)
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want]
    misshaped = []
    for k, shape in want.items():
        if k in sd:
            v = sd[k]
            if not isinstance(v, torch.Tensor):
                misshaped.append(f"{k} (not a tensor: {type(v).__name__})")
            elif tuple(v.shape) != shape:
                misshaped.append(f"{k} {list(v.shape)} (config wants {list(shape)})")
            elif not v.is_floating_point():
                misshaped.append(f"{k} dtype {v.dtype} (want floating point)")
    if missing or unexpected or misshaped:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if items:
                shown = ", ".join(items[:_MAX_PROBLEMS]) + (f", ... ({len(items) - _MAX_PROBLEMS} more)"
                                                            if len(items) > _MAX_PROBLEMS else "")
                parts.append(f"{len(items)} {label}: {shown}")
        raise CheckpointError(f"{name}: state dict does not match its cfg['model'] "
                              f"({config.get('encoder_layers')} layers, dim {config.get('encoder_embed_dim')}, "
                              f"{layout}): " + "; ".join(parts),
                              "the file is damaged or not an ECG-FM checkpoint of this architecture")
    return {_from_fairseq_key(k, layout): sd[k].to(torch.float32) for k in want}


def load_fairseq_checkpoint(src: str | os.PathLike | dict, label_names=None) -> EcgFm:
    """Build an :class:`EcgFm` from a fairseq-signals ``.pt`` (pretrained or finetuned), in eval mode.

    The architecture comes from the checkpoint's ``cfg['model']``. The model
    gets a ``provenance`` dict (see :func:`fairseq_provenance`), also under
    ``model.extra['provenance']``. fairseq checkpoints carry no label names;
    pass ``label_names`` (one per output, e.g. the ``ecgfm-17`` vocabulary's
    names for the released 17-label classifier) to attach them.
    """
    path = src if isinstance(src, (str, os.PathLike)) else None
    name = str(path) if path is not None else "checkpoint"
    state = src if isinstance(src, dict) else safe_load(src)
    if not is_fairseq_checkpoint(state):
        keys = sorted(state)[:8] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{name}: not a fairseq-signals checkpoint (top level: {keys}); "
                              "expected 'cfg' with cfg['model'] and a 'model' state dict")
    cfg_model = state["cfg"]["model"]
    config = config_from_fairseq(cfg_model, name)
    layout = _layout(cfg_model)
    if layout == "classifier" and not config.get("num_labels"):
        proj = state["model"].get("proj.weight")
        if isinstance(proj, torch.Tensor) and proj.dim() == 2:
            config["num_labels"] = int(proj.shape[0])
        else:
            raise CheckpointError(f"{name}: classifier checkpoint without num_labels or proj.weight")
    ours = convert_state_dict(state["model"], config, layout, name)
    try:
        with torch.device("meta"):
            model = EcgFm(config, label_names=label_names)
        model = model.to_empty(device="cpu")
        model.load_state_dict(ours, strict=True)
    except (ValueError, RuntimeError) as e:
        raise CheckpointError(f"{name}: cannot build the model from cfg['model'] "
                              f"({config.get('num_labels')} outputs): {e}") from None
    hist = state.get("optimizer_history") or []
    n = hist[-1].get("num_updates") if hist and isinstance(hist[-1], dict) else None
    if model.quantizer is not None and isinstance(n, int):
        model.set_num_updates(n)
    prov = provenance(path, IMPORTER, **fairseq_provenance(state))
    model.extra = {"provenance": prov}
    if isinstance(n, int):
        # continuing pretraining from this checkpoint resumes its Gumbel temperature schedule
        model.extra["training"] = {"updates": n}
    return model.eval()


def _sniff(info) -> bool:
    return info.kind == "torch" and ("cfg" in info.strings or "args" in info.strings) and (
        info.has_key_prefix("encoder.layers.", "encoder.encoder.layers.", "feature_extractor.conv_layers.",
                            "encoder.feature_extractor."))


@register_importer(IMPORTER, _sniff, "fairseq-signals ECG-FM .pt (mimic_iv_ecg_physionet_pretrained.pt, mimic_iv_ecg_finetuned.pt)")
def import_fairseq(path, **overrides) -> tuple[EcgFm, list[str]]:
    """Read a released ECG-FM checkpoint; returns (model, report lines)."""
    refuse_overrides(path, overrides, "fairseq-signals files", " in cfg['model']")
    model = load_fairseq_checkpoint(path)
    prov, cfg = model.extra["provenance"], model.config
    lines = [f"read {path} (fairseq-signals, sha256 {prov.get('sha256', '?')})",
             "  " + ", ".join(f"{k}={prov[k]}" for k in ("fairseq_model", "num_updates", "criterion")
                              if prov.get(k) is not None),
             f"  ECG-FM: {cfg.get('encoder_layers')} layers, dim {cfg.get('encoder_embed_dim')}, "
             f"{cfg.get('encoder_attention_heads')} heads, {sum(p.numel() for p in model.parameters()):,} parameters"]
    return model, lines
