"""ECG-CPC (Al-Masud, Lopez Alcaraz & Strodthoff, ICLR 2026): a conv encoder, four causal S4 blocks,
pretrained with CPC; and the importer of its released Lightning checkpoint.

The arithmetic follows ../shared/reference/ecgcpc.md:

* **encoder** ``ts_encoder.encoder.layers.{i}``: Conv1d (no bias, padding (k-1)//2) -> BatchNorm1d ->
  ReLU; released: 12->512 k3 s2, then three 512->512 k1 (tokens at half the input rate);
* **predictor** ``ts_encoder.predictor.predictor``: four residual blocks
  ``x <- LayerNorm(Dropout(S4(x)) + x)`` (post-norm, no final norm); each S4 layer is the early-2022
  "standalone" S4 (NPLR / HiPPO-LegS, N = 8 stored as 4 conjugate pairs, one timescale per
  channel, **bilinear** discretisation), causal FFT convolution with zero padding to 2T, a D skip
  term, exact GELU, a channel-wise linear to 2H and a GLU;
* **features** = the last block's output (B, T, H); the pooled embedding is the plain mean over
  time (``seq.mean(dim=1)``, what the benchmark's linear heads read);
* ``ts_encoder.head_ssl.proj.0`` (512x512, no bias) is the CPC prediction head: the benchmark
  neither loads nor uses it, so it is built only with ``ssl_head=True`` (then :meth:`ECGCPC.cpc_loss`
  is the pretraining objective).

**The S4 kernel in plain PyTorch.** The original's only fast paths are a CUDA extension that is
not in its repository and GPU-only pykeops; here the truncated generating function is evaluated
at the roots of unity by a direct Cauchy sum and the rank-1 Woodbury correction, then
inverse-FFT'd, all in torch (CPU or GPU).

**The length grid.** The ``omega``/``z`` buffers hold the FFT grid of pretraining (Lg = 1200
tokens = 10 s at 240 Hz), and ``C`` is length-corrected for that grid: the kernel is always
evaluated on the stored grid and truncated to the input's T tokens (T <= Lg). For T > Lg the grid
is doubled until it covers T with ``C~ <- (I + dA^L)^T C~`` -- the correction the original's
``double_length()`` intends -- computed in temporaries: unlike the original, which rewrites ``C``
in place on the wrong assumption that it was corrected for its own 2.5-s ``L`` (and stays
corrupted afterwards), running any length never changes a parameter or a buffer, and the first
Lg kernel taps are the same as on the stored grid (the model is causal, so a longer input's first
Lg tokens get the same features as a 10-s input).

The released file (``last_11597276.ckpt``, with ``config_last_11597276_ckpt.yaml`` beside it) is a
Lightning checkpoint whose ``hyper_parameters`` is an omegaconf DictConfig of ``clinical_ts``
dataclasses: it is read by :func:`ecgtool.models.serial.safe_load` with those classes as inert stubs
(never imported or run), and the architecture comes from tensor shapes plus the stored config.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ecgtool.errors import CheckpointError
from ecgtool.models.base import EcgModel
from ecgtool.models.card import card
from ecgtool.models.contract import InputContract
from ecgtool.models.registry import register_family, register_importer, register_model
from ecgtool.models.serial import Stub, match_state_dict, provenance, safe_load

FAMILY = "ecgcpc"

RELEASED_CONFIG: dict[str, Any] = {
    "in_channels": 12,
    "enc_features": [512, 512, 512, 512],
    "enc_kernel_sizes": [3, 1, 1, 1],
    "enc_strides": [2, 1, 1, 1],
    "d_state": 8,          # N (stored as N/2 complex conjugate pairs)
    "n_layers": 4,
    "grid_length": 1200,   # Lg: the FFT grid of pretraining (10 s at 240 Hz -> 1200 tokens)
    "dropout": 0.2,        # DropoutNd (mask shared over time) in the S4 layers and the blocks
    "ssl_head": False,     # the CPC prediction head (not loaded by the benchmark)
    "n_classes": None,     # the benchmark's linear head over the mean-pooled features
}

TINY_CONFIG: dict[str, Any] = {**RELEASED_CONFIG, "enc_features": [64, 64, 64, 64], "grid_length": 600}


def normalise_config(config: dict[str, Any]) -> dict[str, Any]:
    """A complete, JSON-serialisable config (defaults from the released one), checked."""
    unknown = set(config) - set(RELEASED_CONFIG)
    if unknown:
        raise ValueError(f"unknown ECG-CPC config keys: {', '.join(sorted(unknown))}")
    cfg = {**RELEASED_CONFIG, **config}
    for key in ("enc_features", "enc_kernel_sizes", "enc_strides"):
        cfg[key] = [int(v) for v in cfg[key]]
    for key in ("in_channels", "d_state", "n_layers", "grid_length"):
        cfg[key] = int(cfg[key])
    cfg["dropout"] = float(cfg["dropout"])
    cfg["ssl_head"] = bool(cfg["ssl_head"])
    cfg["n_classes"] = None if cfg["n_classes"] in (None, 0) else int(cfg["n_classes"])
    n = len(cfg["enc_features"])
    if n == 0 or len(cfg["enc_kernel_sizes"]) != n or len(cfg["enc_strides"]) != n:
        raise ValueError("enc_features, enc_kernel_sizes and enc_strides must be non-empty and of one length")
    if cfg["d_state"] < 2 or cfg["d_state"] % 2:
        raise ValueError(f"d_state must be even (conjugate pairs), not {cfg['d_state']}")
    if cfg["grid_length"] < 2 or cfg["grid_length"] % 2:
        raise ValueError(f"grid_length must be even, not {cfg['grid_length']}")
    if cfg["n_layers"] < 1:
        raise ValueError("n_layers must be at least 1")
    return cfg


# ----------------------------------------------------------------------------- building blocks


class DropoutNd(nn.Module):
    """Dropout whose mask is shared over time: (B, H, T) -> mask (B, H, 1) (identity in eval)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        mask = torch.rand(x.shape[:2] + (1,) * (x.ndim - 2), device=x.device) < 1.0 - self.p
        return x * mask * (1.0 / (1.0 - self.p))


class TransposedLinear(nn.Module):
    """A linear map over the channel axis of (B, H, T): weight (out, in), bias (out, 1)."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d_out, d_in))
        self.bias = nn.Parameter(torch.empty(d_out, 1))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1.0 / math.sqrt(d_in)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("oi,bil->bol", self.weight, x) + self.bias


def _conj(x: torch.Tensor) -> torch.Tensor:
    """Append the conjugates along the last axis (N/2 pairs -> N states)."""
    return torch.cat([x, x.conj()], dim=-1)


def fft_grid(length: int, dtype: torch.dtype = torch.cfloat, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(omega, z) of an FFT grid of ``length``: omega_k = exp(-2 pi i k / L), z_k = 2 (1 - omega_k) / (1 + omega_k),
    k = 0 .. L/2, computed as the original computes them (a complex power of one root)."""
    omega = torch.tensor(np.exp(-2j * np.pi / length), dtype=dtype, device=device)
    omega = omega ** torch.arange(0, length // 2 + 1, device=device)
    z = 2 * (1 - omega) / (1 + omega)
    return omega, z


def hippo_legs_nplr(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HiPPO-LegS in normal-plus-low-rank form, one of each conjugate pair: (w, P, B), each (n/2,)."""
    q = np.arange(n, dtype=np.float64)
    col, row = np.meshgrid(q, q)
    r = 2 * q + 1
    M = -(np.where(row >= col, r, 0) - np.diag(q))
    T = np.sqrt(np.diag(2 * q + 1))
    A = T @ M @ np.linalg.inv(T)
    B = np.diag(T).copy()
    P = np.sqrt(0.5 + q)
    AP = A + np.outer(P, P)  # normal: -1/2 I plus a skew-symmetric matrix
    w, V = np.linalg.eig(AP)
    keep = np.argsort(-w.imag)[: n // 2]  # the halves with positive imaginary part, largest first
    w, V = w[keep], V[:, keep]
    Vh = V.conj().T
    return w, Vh @ P.astype(complex), Vh @ B.astype(complex)


class NPLRKernel(nn.Module):
    """The S4 (v2, NPLR) convolution kernel of H channels, one output channel (``channels=1``).

    Stored as the original stores them (real views of complex tensors, trailing 2): parameters
    ``C`` (1, H, N/2, 2) -- length-corrected for the grid -- ; buffers ``omega``, ``z`` (Lg/2+1, 2),
    ``log_dt`` (H,), ``B``, ``P``, ``Q`` (1, H, N/2, 2) and ``w`` (H, N/2, 2). Nothing here is ever
    written after construction or loading.
    """

    def __init__(self, d_model: int, d_state: int, grid_length: int):
        super().__init__()
        h, n2 = d_model, d_state // 2
        w, p, b = hippo_legs_nplr(d_state)
        w_t = torch.as_tensor(w, dtype=torch.cfloat).expand(h, n2)
        p_t = torch.as_tensor(p, dtype=torch.cfloat).expand(1, h, n2)
        b_t = torch.as_tensor(b, dtype=torch.cfloat).expand(1, h, n2)
        log_dt = torch.rand(h) * (math.log(0.1) - math.log(0.001)) + math.log(0.001)
        omega, z = fft_grid(grid_length)
        self.register_buffer("omega", torch.view_as_real(omega).clone())
        self.register_buffer("z", torch.view_as_real(z).clone())
        self.register_buffer("log_dt", log_dt)
        self.register_buffer("B", torch.view_as_real(b_t).clone())
        self.register_buffer("P", torch.view_as_real(p_t).clone())
        self.register_buffer("w", torch.view_as_real(w_t).clone())
        self.register_buffer("Q", torch.view_as_real(p_t.conj().resolve_conj()).clone())  # Q = conj(P): A = Lambda - P P*
        self.C = nn.Parameter(torch.zeros(1, h, n2, 2))
        with torch.no_grad():  # random C, corrected for the grid length: C~ = (I - dA^Lg)^T C
            c = torch.randn(1, h, n2, dtype=torch.cfloat)
            if not c.is_meta:
                c = self._correct(c, grid_length, sign=-1.0)
            self.C.copy_(torch.view_as_real(c))

    @property
    def grid_length(self) -> int:
        return 2 * (int(self.omega.shape[0]) - 1)

    def _complex(self, name: str) -> torch.Tensor:
        return torch.view_as_complex(getattr(self, name).contiguous())

    def dense_transition(self) -> torch.Tensor:
        """dA = (I - dt/2 A)^-1 (I + dt/2 A) with A = diag(w_f) - P_f Q_f^T, in complex128: (H, N, N)."""
        w = _conj(self._complex("w")).to(torch.complex128)              # (H, N)
        p = _conj(self._complex("P")[0]).to(torch.complex128)           # (H, N)
        q = _conj(self._complex("Q")[0]).to(torch.complex128)
        dt = torch.exp(self.log_dt.to(torch.float64)).to(torch.complex128)[:, None, None]
        a = torch.diag_embed(w) - p[:, :, None] * q[:, None, :]
        eye = torch.eye(w.shape[-1], dtype=a.dtype, device=a.device).expand_as(a)
        return torch.linalg.solve(eye - dt / 2 * a, eye + dt / 2 * a)

    def _correct(self, c: torch.Tensor, length: int, sign: float) -> torch.Tensor:
        """C~ <- (I + sign dA^length)^T C~ on (1, H, N/2) complex (a temporary; no state changes)."""
        da_l = torch.linalg.matrix_power(self.dense_transition(), length)   # (H, N, N)
        cf = _conj(c).to(torch.complex128)
        prod = torch.einsum("hnm,chn->chm", da_l, cf)
        out = cf + sign * prod
        return out[..., : c.shape[-1]].to(c.dtype)

    def forward(self, length: int) -> torch.Tensor:
        """The kernel (1, H, length) on the stored grid, truncated; for length > Lg on the doubled grid
        (evaluated in double precision, C~ corrected in temporaries)."""
        c = self._complex("C")
        grid = self.grid_length
        if length <= grid:
            omega, z = self._complex("omega"), self._complex("z")
            cdtype = c.dtype
        else:
            cdtype = torch.complex128
            c = c.to(cdtype)
            while grid < length:
                c = self._correct(c, grid, sign=1.0)
                grid *= 2
            omega, z = fft_grid(grid, dtype=cdtype, device=c.device)
        rdtype = torch.float64 if cdtype == torch.complex128 else self.log_dt.dtype
        dt = torch.exp(self.log_dt.to(rdtype))
        w = self._complex("w").to(cdtype) * dt[:, None]                                   # (H, N/2)
        b = torch.cat([self._complex("B"), self._complex("P")], dim=0).to(cdtype)         # (2, H, N/2): B, P
        cq = torch.cat([c, self._complex("Q").to(cdtype)], dim=0)                        # (2, H, N/2): C, Q
        v = b[:, None] * cq[None, :]                                                      # (2, 2, H, N/2)
        # Cauchy sum over the states and their conjugates: r_ab(k) = sum_n v_n / (z_k - w_n) + conj
        r = 0
        for i in range(w.shape[-1]):
            vi, wi = v[..., i, None], w[:, i, None]
            r = r + vi / (z - wi) + vi.conj() / (z - wi.conj())
        r = r * dt[None, None, :, None]                                                   # (2, 2, H, L/2+1)
        k_f = r[:-1, :-1] - r[:-1, -1:] * r[-1:, :-1] / (1 + r[-1:, -1:])                 # Woodbury (rank 1)
        k_f = k_f * 2 / (1 + omega)                                                       # bilinear transform
        k = torch.fft.irfft(k_f, n=grid)[..., :length]                                    # (1, 1, H, length)
        return k[-1].to(self.log_dt.dtype)


class HippoKernel(nn.Module):
    """Holds the NPLR kernel under ``kernel`` (the released key path is ``kernel.kernel.*``)."""

    def __init__(self, d_model: int, d_state: int, grid_length: int):
        super().__init__()
        self.kernel = NPLRKernel(d_model, d_state, grid_length)
        self._cache: tuple | None = None  # (key, kernel): reused by inference while the weights stay the same

    def forward(self, length: int) -> torch.Tensor:
        if torch.is_grad_enabled():  # training: always recomputed, gradients flow
            return self.kernel(length)
        tensors = list(self.kernel.parameters()) + list(self.kernel.buffers())
        key = (length, tuple((t.device, t.dtype, t.data_ptr(), t._version) for t in tensors))
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self.kernel(length))
        return self._cache[1]


class S4Layer(nn.Module):
    """Causal S4 on (B, H, T): FFT convolution with the kernel, + D u, GELU, dropout, linear to 2H, GLU."""

    def __init__(self, d_model: int, d_state: int, grid_length: int, dropout: float):
        super().__init__()
        self.D = nn.Parameter(torch.randn(1, d_model))
        self.kernel = HippoKernel(d_model, d_state, grid_length)
        self.activation = nn.GELU()
        self.dropout = DropoutNd(dropout)
        self.output_linear = nn.Sequential(TransposedLinear(d_model, 2 * d_model), nn.GLU(dim=-2))

    def convolve(self, u: torch.Tensor) -> torch.Tensor:
        """y = causal conv(u, K) + D u, before the activation: (B, H, T)."""
        t = u.shape[-1]
        with torch.autocast(device_type="cuda" if u.is_cuda else "cpu", enabled=False):
            u = u.float() if u.dtype in (torch.float16, torch.bfloat16) else u
            k = self.kernel(t).to(u.dtype)                              # (1, H, T)
            k_f = torch.fft.rfft(k, n=2 * t)
            u_f = torch.fft.rfft(u, n=2 * t)
            y = torch.fft.irfft(u_f * k_f, n=2 * t)[..., :t]
            return y + u * self.D[0][:, None]

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        y = self.dropout(self.activation(self.convolve(u)))
        return self.output_linear(y)


class S4Stack(nn.Module):
    """Residual post-norm blocks x <- LayerNorm(Dropout(S4(x)) + x) on (B, H, T)."""

    def __init__(self, d_model: int, d_state: int, n_layers: int, grid_length: int, dropout: float):
        super().__init__()
        self.s4_layers = nn.ModuleList(S4Layer(d_model, d_state, grid_length, dropout) for _ in range(n_layers))
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(n_layers))
        self.dropouts = nn.ModuleList(DropoutNd(dropout) for _ in range(n_layers))

    def block(self, i: int, x: torch.Tensor) -> torch.Tensor:
        z = self.dropouts[i](self.s4_layers[i](x))
        return self.norms[i]((z + x).transpose(-1, -2)).transpose(-1, -2)


class ConvEncoder(nn.Module):
    """``layers.{i}`` = Conv1d(no bias, padding (k-1)//2) -> BatchNorm1d -> ReLU."""

    def __init__(self, in_channels: int, features: list[int], kernel_sizes: list[int], strides: list[int]):
        super().__init__()
        widths = [in_channels] + list(features)
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Conv1d(widths[i], widths[i + 1], k, stride=s, padding=(k - 1) // 2, bias=False),
                          nn.BatchNorm1d(widths[i + 1]), nn.ReLU())
            for i, (k, s) in enumerate(zip(kernel_sizes, strides)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class _Predictor(nn.Module):
    def __init__(self, stack: S4Stack):
        super().__init__()
        self.predictor = stack


class _SSLHead(nn.Module):
    def __init__(self, d_model: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(d_model, d_model, bias=False))


class _TSEncoder(nn.Module):
    """The released module tree: ``ts_encoder.{encoder, predictor.predictor, head_ssl.proj.0}``."""

    def __init__(self, cfg: dict[str, Any]):
        super().__init__()
        d = cfg["enc_features"][-1]
        self.encoder = ConvEncoder(cfg["in_channels"], cfg["enc_features"], cfg["enc_kernel_sizes"],
                                   cfg["enc_strides"])
        self.predictor = _Predictor(S4Stack(d, cfg["d_state"], cfg["n_layers"], cfg["grid_length"], cfg["dropout"]))
        self.head_ssl = _SSLHead(d) if cfg["ssl_head"] else None


def _default_contract(in_channels: int) -> InputContract:
    base = card("ecgcpc-base").contract
    if in_channels == len(base.leads):
        return base
    return replace(base, leads=tuple(f"ch{i}" for i in range(in_channels)), preset=None)


@register_family
class ECGCPC(EcgModel):
    """ECG-CPC behind the model interface: ``features`` = an S4 block's output (B, T, H), tokens at fs/2."""

    family = FAMILY
    head_name = "head"

    def __init__(self, config: dict[str, Any] | None = None, contract: InputContract | None = None,
                 label_names: list[str] | None = None):
        cfg = normalise_config(config or {})
        contract = contract or _default_contract(cfg["in_channels"])
        self.check_io(contract, cfg["in_channels"], label_names, cfg["n_classes"])
        super().__init__(cfg, contract, label_names)
        self.ts_encoder = _TSEncoder(cfg)
        self.head = self.make_classifier(cfg["n_classes"]) if cfg["n_classes"] else None

    # -- the model interface ---------------------------------------------------------

    @property
    def stack(self) -> S4Stack:
        return self.ts_encoder.predictor.predictor

    @property
    def embed_dim(self) -> int:
        return int(self.config["enc_features"][-1])

    def feature_dim(self, layer: int | None = None) -> int:
        self.layer_index(layer)
        return self.embed_dim

    @property
    def num_layers(self) -> int:
        return int(self.config["n_layers"])

    def layer_modules(self) -> list[nn.Module]:
        """Block i = (S4 layer i, LayerNorm i), as throw-away containers (nothing registered twice)."""
        return [nn.ModuleList([s4, norm]) for s4, norm in zip(self.stack.s4_layers, self.stack.norms)]

    def input_modules(self) -> list[nn.Module]:
        return [self.ts_encoder.encoder]

    def classifier_config(self, n_labels: int | None) -> dict[str, Any]:
        return {**self.config, "n_classes": n_labels}

    def make_classifier(self, n_labels: int) -> nn.Module:
        return nn.Linear(self.embed_dim, n_labels)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The conv encoder's output (B, H, T) of (B, leads, samples); NaN set to 0 first."""
        return self.ts_encoder.encoder(torch.nan_to_num(x))

    def features(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None,
                 layer: int | None = None) -> torch.Tensor:
        """Output of the last S4 block, or of block ``layer`` (0-based), time-major: (B, T, H).

        The model is causal, so padding at the end leaves the real frames as they are;
        ``padding_mask`` is not used here (:meth:`pool` leaves padded frames out)."""
        i = self.layer_index(layer)
        h = self.encode(x)
        for b in range(self.num_layers if i is None else i + 1):
            h = self.stack.block(b, h)
        return h.transpose(1, 2)

    # pool: the base class's mean over (unpadded) frames is the original's seq.mean(dim=1)

    # -- ECG-CPC specifics -------------------------------------------------------------

    def output_length(self, n_samples: int) -> int:
        t = int(n_samples)
        for k, s in zip(self.config["enc_kernel_sizes"], self.config["enc_strides"]):
            t = (t + 2 * ((k - 1) // 2) - k) // s + 1
        return t

    def forward_intermediates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named intermediates (the names of the reference's io.npz): ``enc_layer{i}_out`` (B, C_i, T),
        ``enc_out`` (B, T, H), ``s4_kernel{l}`` (1, H, T), ``s4_layer{l}_y`` (B, H, T) (S4 + GLU, before the
        residual), ``s4_block{l}_out`` (B, T, H), ``features``, ``pooled`` and, with the SSL head,
        ``head_ssl_out``."""
        out: dict[str, torch.Tensor] = {}
        h = torch.nan_to_num(x)
        for i, layer in enumerate(self.ts_encoder.encoder.layers):
            h = layer(h)
            out[f"enc_layer{i}_out"] = h
        out["enc_out"] = h.transpose(1, 2)
        for b, s4 in enumerate(self.stack.s4_layers):
            out[f"s4_kernel{b}"] = s4.kernel(h.shape[-1])
            y = s4(h)
            out[f"s4_layer{b}_y"] = y
            h = self.stack.norms[b]((self.stack.dropouts[b](y) + h).transpose(-1, -2)).transpose(-1, -2)
            out[f"s4_block{b}_out"] = h.transpose(1, 2)
        out["features"] = h.transpose(1, 2)
        out["pooled"] = out["features"].mean(1)
        if self.ts_encoder.head_ssl is not None:
            out["head_ssl_out"] = self.ts_encoder.head_ssl.proj(out["features"])
        return out

    def cpc_loss(self, x: torch.Tensor, steps_predicted: int = 14, n_negatives: int = 128,
                 same_seq_only: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """The CPC pretraining loss and accuracy (needs ``ssl_head``).

        Targets z = the encoder output (B, T, H), predictions p_t = head_ssl(c_t) of the causal S4
        outputs; for each t < T - steps the positive is z_{t+steps} and ``n_negatives`` are drawn
        uniformly (``torch.randint``, global RNG) from the other steps of the same sequence (or of
        the whole batch); score = raw dot product; loss = cross-entropy with the positive first,
        batch-mean, summed over t; accuracy = share of positions where the positive scores highest.
        """
        head = self.ts_encoder.head_ssl
        if head is None:
            raise ValueError("this ECG-CPC model has no CPC head (build it with ssl_head=True)")
        z = self.encode(x)
        c = z
        for b in range(self.num_layers):
            c = self.stack.block(b, c)
        z, pred = z.transpose(1, 2), head.proj(c.transpose(1, 2))
        bs, seq, _ = z.shape
        z_flat = z.reshape(-1, z.shape[-1])
        loss = torch.zeros((), dtype=z.dtype, device=z.device)
        hits = torch.zeros((), dtype=torch.int64, device=z.device)
        targets = torch.zeros(bs, dtype=torch.int64, device=z.device)
        n_pos = seq - steps_predicted
        if n_pos <= 0:
            raise ValueError(f"{seq} steps are too few to predict {steps_predicted} ahead")
        for i in range(n_pos):
            positives = z[:, i + steps_predicted].unsqueeze(1)
            high = (seq - 1) if same_seq_only else bs * (seq - 1)
            idxs = torch.randint(0, high, (bs * n_negatives,)).to(z.device)
            idx_seq = torch.remainder(idxs, seq - 1)
            idx_seq = idx_seq + (idx_seq >= i + steps_predicted).long()      # skip the positive
            if same_seq_only:
                idx_batch = torch.arange(0, bs, device=z.device).repeat_interleave(n_negatives)
            else:
                idx_batch = idxs // (seq - 1)
            negatives = z_flat[idx_batch * seq + idx_seq].view(bs, n_negatives, -1)
            candidates = torch.cat([positives, negatives], dim=1)
            scores = torch.sum(pred[:, i].unsqueeze(1) * candidates, dim=-1)
            hits = hits + torch.sum(torch.argmax(scores, dim=-1) == targets)
            loss = loss + F.cross_entropy(scores, targets)
        return loss, hits.float() / bs / n_pos


# ----------------------------------------------------------------------------- registered variants


def _variant(base: dict[str, Any], overrides: dict[str, Any]) -> ECGCPC:
    overrides = dict(overrides)
    contract = overrides.pop("contract", None)
    labels = overrides.pop("label_names", None)
    return ECGCPC(normalise_config({**base, **overrides}), contract=contract, label_names=labels)


@register_model("ecgcpc-base")
def ecgcpc_base(**overrides) -> ECGCPC:
    return _variant(RELEASED_CONFIG, overrides)


@register_model("ecgcpc-tiny")
def ecgcpc_tiny(**overrides) -> ECGCPC:
    return _variant(TINY_CONFIG, overrides)


# ----------------------------------------------------------------------------- the released checkpoint

IMPORTER = "ecgcpc-ckpt"
# classes the checkpoint's pickle names besides tensors: omegaconf nodes and clinical_ts config
# dataclasses (hyper_parameters), typing generics and operator.getitem (the nodes' ref types, as
# List[int] or Union[...]), and the Python-2 names of builtins (torch.save writes protocol 2). All
# become inert stubs: never imported, never called.
STUBS = ("omegaconf", "clinical_ts", "typing", "_operator")
OVERRIDES = ("ssl_head", "enc_strides")

ENC_KEY = re.compile(r"^ts_encoder\.encoder\.layers\.(\d+)\.0\.weight$")
S4_KEY = re.compile(r"^ts_encoder\.predictor\.predictor\.s4_layers\.(\d+)\.D$")
SSL_KEY = "ts_encoder.head_ssl.proj.0.weight"
KERNEL = "ts_encoder.predictor.predictor.s4_layers.{}.kernel.kernel."


def plain_config(obj: Any, depth: int = 0) -> Any:
    """A stubbed omegaconf tree (DictConfig / ListConfig / value nodes) as plain dicts, lists and values."""
    if depth > 64:
        raise CheckpointError("hyper_parameters nest too deeply")
    if isinstance(obj, Stub):
        name = obj.qualified_name
        state = getattr(obj, "state", None)
        state = state if isinstance(state, dict) else {}
        if name.endswith(".DictConfig"):
            content = state.get("_content")
            return {str(k): plain_config(v, depth + 1) for k, v in content.items()} if isinstance(content, dict) \
                else content
        if name.endswith(".ListConfig"):
            content = state.get("_content")
            return [plain_config(v, depth + 1) for v in content] if isinstance(content, list) else content
        if name.endswith(".UnionNode"):
            return plain_config(state.get("_content"), depth + 1)
        if name.startswith("omegaconf.nodes."):
            return state.get("_val")
        return f"<{name}>"
    if isinstance(obj, dict):
        return {str(k): plain_config(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain_config(v, depth + 1) for v in obj]
    return obj


def _get(cfg: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(cfg, dict) or key not in cfg:
            return None
        cfg = cfg[key]
    return cfg


def _find_ckpt(folder: Path) -> Path | None:
    found = sorted(p for p in folder.iterdir() if p.suffix == ".ckpt" and p.is_file())
    return found[0] if len(found) == 1 else None


def _sniff_file(info) -> bool:
    return (info.kind == "torch" and info.has_key_prefix("ts_encoder.predictor.predictor.s4_layers.")
            and info.has_key_prefix("ts_encoder.encoder.layers."))


def _sniff(info) -> bool:
    if info.kind == "folder":
        ckpt = _find_ckpt(info.path)
        if ckpt is None:
            return False
        from ecgtool.models.serial import FileInfo

        return _sniff_file(FileInfo(ckpt))
    return _sniff_file(info)


def extract_state_dict(obj: Any, source: str) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """(state dict, plain hyper_parameters or {}, top-level facts) of a Lightning checkpoint or a bare state dict."""
    top: dict[str, Any] = {}
    hp: dict = {}
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        sd = obj["state_dict"]
        for key, name in (("epoch", "epoch"), ("global_step", "global_step"),
                          ("pytorch-lightning_version", "lightning_version")):
            if isinstance(obj.get(key), (int, str)):
                top[name] = obj[key]
        raw = obj.get("hyper_parameters")
        if raw is not None:
            hp = plain_config(raw)
            if not isinstance(hp, dict):
                raise CheckpointError(f"{source}: hyper_parameters is not a config mapping ({type(hp).__name__})")
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd = obj
    else:
        raise CheckpointError(f"{source}: no ECG-CPC state_dict inside (top-level {type(obj).__name__}"
                              + (f" keys {', '.join(map(str, list(obj)[:8]))})" if isinstance(obj, dict) else ")"))
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{source}: state_dict entries that are not tensors: {', '.join(map(str, bad[:10]))}")
    return dict(sd), hp, top


def _indices(sd: dict, pattern: re.Pattern, what: str, source: str) -> list[int]:
    ids = sorted(int(m.group(1)) for k in sd for m in [pattern.match(k)] if m)
    if not ids or ids != list(range(len(ids))):
        raise CheckpointError(f"{source}: {what} indices {ids} are not 0..N-1: not an ECG-CPC state dict")
    return ids


def infer_config(sd: dict[str, torch.Tensor], hp: dict, source: str, enc_strides=None) -> tuple[dict, list[str]]:
    """The architecture from tensor shapes, the strides from the stored config; checked against it."""
    notes: list[str] = []
    enc = _indices(sd, ENC_KEY, "encoder layer", source)
    features, kss, in_ch = [], [], None
    for i in enc:
        w = sd[f"ts_encoder.encoder.layers.{i}.0.weight"]
        if w.ndim != 3:
            raise CheckpointError(f"{source}: ts_encoder.encoder.layers.{i}.0.weight has shape {tuple(w.shape)}, "
                                  "expected (out, in, kernel)")
        if i == 0:
            in_ch = int(w.shape[1])
        features.append(int(w.shape[0]))
        kss.append(int(w.shape[2]))
    layers = _indices(sd, S4_KEY, "S4 layer", source)
    d = features[-1]
    pre = KERNEL.format(0)
    try:
        c, omega = sd[pre + "C"], sd[pre + "omega"]
    except KeyError as exc:
        raise CheckpointError(f"{source}: missing {exc.args[0]}") from None
    if c.ndim != 4 or c.shape[-1] != 2 or omega.ndim != 2 or omega.shape[0] < 2:
        raise CheckpointError(f"{source}: {pre}C {tuple(c.shape)} / omega {tuple(omega.shape)} are not S4 v2 kernel "
                              "tensors (C (1, H, N/2, 2), omega (Lg/2+1, 2))")
    if int(c.shape[1]) != d:
        raise CheckpointError(f"{source}: the S4 width {int(c.shape[1])} differs from the encoder's last width {d} "
                              "(an input projection, which the released model does not have)")
    cfg_enc, cfg_pred = _get(hp, "ts", "enc") or {}, _get(hp, "ts", "pred") or {}
    stored_strides = cfg_enc.get("strides")
    if stored_strides is not None:
        if enc_strides is not None:
            raise CheckpointError(f"{source}: the file stores the encoder strides ({stored_strides}); "
                                  "nothing to set (enc_strides)")
        strides = [int(s) for s in stored_strides]
    elif enc_strides is not None:
        strides = [int(s) for s in enc_strides]
        notes.append(f"  encoder strides {strides} as given (the file stores none)")
    else:
        strides = list(RELEASED_CONFIG["enc_strides"])
        if len(strides) != len(features):
            raise CheckpointError(f"{source}: the file stores no encoder strides; give enc_strides=[...] "
                                  f"({len(features)} values)")
        notes.append(f"  the file stores no config: encoder strides assumed {strides} (the released ones; "
                     "override enc_strides)")
    if len(strides) != len(features):
        raise CheckpointError(f"{source}: {len(strides)} encoder strides for {len(features)} encoder layers")
    cfg = normalise_config({
        "in_channels": in_ch, "enc_features": features, "enc_kernel_sizes": kss, "enc_strides": strides,
        "d_state": 2 * int(c.shape[2]), "n_layers": len(layers), "grid_length": 2 * (int(omega.shape[0]) - 1),
        "dropout": float(cfg_pred.get("dropout", RELEASED_CONFIG["dropout"])),
    })
    # the stored config must describe the same network, with the options this module implements
    expect = [
        (("ts", "enc", "features"), features), (("ts", "enc", "kss"), kss),
        (("ts", "pred", "model_dim"), d), (("ts", "pred", "state_dim"), cfg["d_state"]),
        (("ts", "pred", "layers"), cfg["n_layers"]), (("base", "input_channels"), in_ch),
        (("ts", "pred", "causal"), True), (("ts", "pred", "prenorm"), False), (("ts", "pred", "batchnorm"), False),
        (("ts", "pred", "backbone"), "s42"), (("ts", "enc", "normalization"), True),
        (("ts", "enc", "layer_norm"), False), (("ts", "enc", "dilations"), [1] * len(features)),
        (("ts", "enc", "_target_"), "clinical_ts.ts.encoder.RNNEncoder"),
        (("ts", "pred", "_target_"), "clinical_ts.ts.s4.S4Predictor"),
    ]
    shape_fields = ("features", "kss", "model_dim", "state_dim", "layers", "input_channels")
    for path, want in expect:
        have = _get(hp, *path)
        if have is not None and have != want:
            who = "the tensors say" if path[-1] in shape_fields else "ecgtool implements only"
            raise CheckpointError(f"{source}: hyper_parameters {'.'.join(path)} = {have!r}, but {who} {want!r}")
    return cfg, notes


def _check_grid(model: ECGCPC, source: str) -> None:
    """The stored omega/z are an FFT grid (they are used as stored, never recomputed)."""
    for i, s4 in enumerate(model.stack.s4_layers):
        k = s4.kernel.kernel
        omega, z = fft_grid(k.grid_length)
        if not torch.allclose(k.omega, torch.view_as_real(omega), atol=1e-5) or \
                not torch.isfinite(k.z).all() or k.z.shape != k.omega.shape:
            raise CheckpointError(f"{source}: {KERNEL.format(i)}omega/z are not the FFT grid of length "
                                  f"{k.grid_length}")


def _read_yaml(path: Path) -> tuple[dict, str | None]:
    """The loader YAML beside the checkpoint (a sparse Hydra config), or ({}, why not)."""
    try:
        import yaml
    except ImportError:
        return {}, "PyYAML is not installed"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise CheckpointError(f"{path}: not a readable YAML config ({type(exc).__name__})") from None
    return (data if isinstance(data, dict) else {}), None


@register_importer(IMPORTER, _sniff, "ECG-CPC Lightning checkpoint (last_11597276.ckpt, or its unzipped folder "
                                     "with config_last_11597276_ckpt.yaml)")
def import_ecgcpc(path, **overrides) -> tuple[ECGCPC, list[str]]:
    """Load a released ECG-CPC ``.ckpt`` (or the folder holding it and its YAML) into :class:`ECGCPC`.

    ``ssl_head=True`` keeps the CPC prediction head (the benchmark drops it); ``enc_strides`` only
    for a bare state dict that stores no config.
    """
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise CheckpointError(f"{path}: ECG-CPC files store their architecture; unknown settings "
                              f"{', '.join(unknown)} (only {', '.join(OVERRIDES)} may be given)")
    path = Path(path)
    ckpt, yaml_path = path, None
    if path.is_dir():
        ckpt = _find_ckpt(path)
        if ckpt is None:
            raise CheckpointError(f"{path}: a folder, but not with exactly one .ckpt file inside")
        cand = path / f"config_{ckpt.stem}_ckpt.yaml"
        yaml_path = cand if cand.is_file() else None
    source = str(ckpt)
    sd, hp, top = extract_state_dict(safe_load(ckpt, stubs=STUBS), source)
    keep_ssl = bool(overrides.get("ssl_head", False))
    cfg, notes = infer_config(sd, hp, source, overrides.get("enc_strides"))
    cfg["ssl_head"] = keep_ssl
    dropped = {}
    if not keep_ssl and SSL_KEY in sd:
        dropped[SSL_KEY] = sd.pop(SSL_KEY)

    # the input contract: the benchmark's (2.5 s windows at the stored rate), or the YAML's length
    contract = _default_contract(cfg["in_channels"])
    fs = _get(hp, "base", "fs")
    seconds = contract.seconds
    yaml_cfg, yaml_note = (_read_yaml(yaml_path) if yaml_path is not None else ({}, None))
    if yaml_cfg:
        yfs, ysec = _get(yaml_cfg, "base", "fs"), _get(yaml_cfg, "base", "input_size")
        for p, want in ((("ts", "enc", "features"), cfg["enc_features"]), (("ts", "enc", "kss"), cfg["enc_kernel_sizes"]),
                        (("ts", "enc", "strides"), cfg["enc_strides"]),
                        (("ts", "pred", "model_dim"), cfg["enc_features"][-1]),
                        (("ts", "pred", "state_dim"), cfg["d_state"])):
            have = _get(yaml_cfg, *p)
            if have is not None and have != want:
                raise CheckpointError(f"{yaml_path}: {'.'.join(p)} = {have!r}, but the checkpoint has {want!r}")
        fs = yfs if yfs is not None else fs
        seconds = float(ysec) if ysec is not None else seconds
    if fs is not None and (float(fs) != contract.fs or seconds != contract.seconds):
        n = float(fs) * seconds
        contract = replace(contract, fs=float(fs), n_samples=int(round(n)),
                           preset=contract.preset if float(fs) == contract.fs else None)

    model = ECGCPC(cfg, contract=contract)
    match_state_dict(model.state_dict(), sd, source)
    model.load_state_dict({k: (v.to(torch.float32) if v.is_floating_point() else v).contiguous().clone()
                           for k, v in sd.items()}, strict=True)
    _check_grid(model, source)
    model.eval()
    pre_s = _get(hp, "base", "input_size")
    model.extra["provenance"] = provenance(
        ckpt, IMPORTER, **top, pretraining_input_size_s=pre_s, grid_length=cfg["grid_length"],
        config_file=yaml_path.name if yaml_path is not None else None)
    n_params = sum(p.numel() for p in model.parameters())
    lines = [f"read {source} (ECG-CPC Lightning checkpoint, sha256 {model.extra['provenance']['sha256']})"]
    if top:
        lines.append("  " + ", ".join(f"{k}={v}" for k, v in top.items()))
    if yaml_path is not None:
        lines.append(f"  config {yaml_path.name}" + (f" not read ({yaml_note})" if yaml_note else
                                                      f": {contract.fs:g} Hz, {contract.seconds:g} s windows"))
    lines.append(f"  encoder {cfg['in_channels']} -> {cfg['enc_features']} (kernels {cfg['enc_kernel_sizes']}, "
                 f"strides {cfg['enc_strides']}); {cfg['n_layers']} causal S4 blocks, width "
                 f"{cfg['enc_features'][-1]}, state {cfg['d_state']}; kernel grid {cfg['grid_length']} tokens"
                 + (f" (pretrained on {pre_s:g} s)" if isinstance(pre_s, (int, float)) else ""))
    lines += notes
    lines.append(f"  {len(sd)} tensors loaded ({n_params:,} parameters)")
    if dropped:
        lines.append(f"  CPC head {SSL_KEY} not loaded ({dropped[SSL_KEY].numel():,} parameters; as the benchmark "
                     "does; ssl_head=True keeps it)")
    return model, lines
