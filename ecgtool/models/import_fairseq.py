"""Import released fairseq-signals ECG-FM checkpoints (``.pt``).

A fairseq-signals checkpoint is a torch zip-pickle with top-level keys
``cfg`` (plain dict; ``cfg['model']`` holds the architecture), ``model``
(the state dict), ``optimizer_history``, ``extra_state`` and so on.

Safety: the file is read with ``torch.load(weights_only=True)``. Finetuned
checkpoints also hold numpy arrays (AUROC meter state in ``extra_state``);
for those exactly the numpy globals that rebuild arrays, scalars and dtypes
are allowlisted. Anything else a pickle asks for is refused with a
:class:`CheckpointError`; there is no fall back to unrestricted unpickling.

Key mapping (explicit, every tensor accounted for):

- pretraining models (``wav2vec2_cmsc``, ``wav2vec2``, ...): keys as in
  :mod:`ecgtool.models.ecgfm`, pos-conv weight norm as ``weight_g``/``weight_v``
  (torch < 2.1 style, the released files) or
  ``parametrizations.weight.original0``/``original1`` (fairseq-signals after
  2025-01);
- finetuned classifiers (``ecg_transformer_classifier``): the same keys
  prefixed with ``encoder.``, plus ``proj.weight``/``proj.bias``.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import torch

from ecgtool.errors import CheckpointError
from ecgtool.models.ecgfm import BASE_CONFIG, EcgFm, parse_conv_layers

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


# ----------------------------------------------------------------------------
# reading the file safely


def _numpy_safe_globals() -> list:
    """numpy globals needed to rebuild plain arrays, scalars and dtypes (nothing that runs code)."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    mods = ["numpy._core.multiarray", "numpy.core.multiarray"]
    out: list = [np.ndarray, np.dtype]
    for name in ("_reconstruct", "scalar"):
        fn = getattr(core.multiarray, name)
        for m in mods:
            out.append((fn, f"{m}.{name}"))
    # dtype classes (numpy >= 1.25 pickles some dtypes by their class)
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        for name in dir(dtypes):
            obj = getattr(dtypes, name)
            if isinstance(obj, type) and issubclass(obj, np.dtype):
                out.append(obj)
    return out


def _open_source(src) -> tuple[Any, str]:
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if not path.exists():
            raise CheckpointError(f"{path}: no such file")
        if path.is_dir():
            raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
        return path, str(path)
    return src, getattr(src, "name", "<stream>")


def read_fairseq_checkpoint(src: str | os.PathLike | BinaryIO) -> dict:
    """Load a fairseq-signals ``.pt`` file safely (weights-only unpickling); return the top-level dict.

    Raises :class:`CheckpointError` for a missing, truncated or corrupt file,
    a file that is not a torch checkpoint, or a pickle that asks for anything
    outside tensors, containers and plain numpy arrays.
    """
    f, name = _open_source(src)
    mmap = False
    if isinstance(f, Path):
        with open(f, "rb") as fh:
            head = fh.read(4)
        if len(head) < 4:
            raise CheckpointError(f"{name}: file is empty or truncated, not a torch checkpoint")
        if head[:2] == b"PK":
            if not zipfile.is_zipfile(f):
                raise CheckpointError(f"{name}: truncated or corrupt torch checkpoint (broken zip archive)",
                                      "download the file again")
            # memory-map: the optimizer state of a released file (~1 GB) is never read into memory
            mmap = True
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            obj = torch.load(f, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        msg = str(e)
        lines = [ln.strip() for ln in msg.splitlines() if "global" in ln.lower() and "safe_globals" not in ln
                 and "add_safe_globals" not in ln]
        if lines:
            detail = lines[0].split("WeightsUnpickler error:")[-1].strip()
            raise CheckpointError(f"{name}: refused to load: the pickle asks for code outside tensors, "
                                  f"containers and numpy arrays ({detail[:200]})",
                                  "only load checkpoints from a source you trust; a released ECG-FM "
                                  "checkpoint never needs this") from None
        detail = [ln.strip() for ln in msg.splitlines() if ln.strip()][-2:]
        raise CheckpointError(f"{name}: not a torch checkpoint (unpickling failed: "
                              f"{_first_line(detail[0] if detail else msg)})",
                              "pass a fairseq-signals .pt file") from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, KeyError, IndexError,
            TypeError, AttributeError, ImportError) as e:
        raise CheckpointError(f"{name}: cannot read as a torch checkpoint: truncated or corrupt file "
                              f"({type(e).__name__}: {_first_line(str(e))})", "download the file again") from None
    return obj


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


def sniff_torch_file(path: str | os.PathLike) -> bool:
    """Cheap byte check: does the file look like a torch checkpoint (zip with data.pkl, or a legacy pickle)?"""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    if head[:2] == b"PK":
        try:
            with zipfile.ZipFile(path) as z:
                return any(n.endswith("data.pkl") for n in z.namelist())
        except zipfile.BadZipFile:
            return False
    return head[:1] == b"\x80"  # pickle protocol 2+ (legacy torch.save)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


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
    if path is not None:
        prov["source_file"] = os.path.basename(str(path))
        prov["source_sha256"] = sha256_file(path)
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


def load_fairseq_checkpoint(src: str | os.PathLike | BinaryIO | dict, label_names=None) -> EcgFm:
    """Build an :class:`EcgFm` from a fairseq-signals ``.pt`` (pretrained or finetuned), in eval mode.

    The architecture comes from the checkpoint's ``cfg['model']``. The model
    gets a ``provenance`` dict (see :func:`fairseq_provenance`), also under
    ``model.extra['provenance']``. fairseq checkpoints carry no label names;
    pass ``label_names`` (one per output, e.g. ``ecgfm.MIMIC_IV_ECG_LABELS``
    for the released 17-label classifier) to attach them.
    """
    path = src if isinstance(src, (str, os.PathLike)) else None
    name = str(path) if path is not None else getattr(src, "name", "checkpoint")
    state = src if isinstance(src, dict) else read_fairseq_checkpoint(src)
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
    prov = fairseq_provenance(state, path)
    prov["source"] = prov.get("source_file") or name
    prov["importer"] = "ecgtool.models.import_fairseq"
    model.provenance = prov
    model.extra = {"provenance": prov}
    if isinstance(n, int):
        # continuing pretraining from this checkpoint resumes its Gumbel temperature schedule
        model.extra["training"] = {"updates": n}
    return model.eval()
