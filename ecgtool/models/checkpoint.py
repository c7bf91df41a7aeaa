"""Native checkpoints (safetensors + metadata), one loader for every model source, devices.

A native checkpoint is a safetensors file: the model's state dict plus one
metadata entry, ``ecgtool``, a JSON object with ``format_version``,
``family``, ``config`` (architecture), ``contract`` (input contract),
``label_names``, ``thresholds``, ``temperature`` (calibration), and
``provenance`` (source file, its sha256, importer, ecgtool version, time) and
any further extras. Nothing in it is pickled, so loading cannot run code.

:func:`load_model` takes a registry name, a native checkpoint, a fairseq-signals
``.pt`` or an ECGFounder ``.pth``; the kind is read from the file's content,
not its name.
"""

from __future__ import annotations

import importlib
import json
import os
import pickletools
import struct
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from ecgtool.errors import CheckpointError, InputError, UsageError
from ecgtool.models.contract import InputContract

FORMAT_VERSION = 1
META_KEY = "ecgtool"
# family -> module that provides model_from_config(config, contract=None, label_names=None)
FAMILY_MODULES = {"net1d": "ecgtool.models.net1d", "ecgfm": "ecgtool.models.ecgfm"}
# extras kept on ``model.extra`` and stored in the metadata
KNOWN_EXTRAS = ("thresholds", "temperature", "provenance")
_MAX_HEADER = 100 * 1024 * 1024

RELEASED_HINT = ("ECGFounder: download 12_lead_ECGFounder.pth or 1_lead_ECGFounder.pth from "
                 "https://huggingface.co/PKUDigitalHealth/ECGFounder; ECG-FM: the fairseq-signals .pt "
                 "from https://huggingface.co/wanglab/ecg-fm; then 'ecgtool models import FILE -o model.safetensors'")


# --------------------------------------------------------------------------- devices

def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {spec}: CUDA is not available on this machine "
                             f"(torch {torch.__version__}, {'CPU-only build' if torch.version.cuda is None else 'no GPU visible'})",
                             "use --device cpu or --device auto")
        if spec != "cuda":
            try:
                index = int(spec.split(":", 1)[1])
            except ValueError:
                raise UsageError(f"--device {spec}: expected cuda:N with N a number") from None
            if not 0 <= index < torch.cuda.device_count():
                raise UsageError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)",
                                 f"use cuda:0..cuda:{torch.cuda.device_count() - 1}")
        return torch.device(spec)
    raise UsageError(f"--device {spec!r}: expected auto, cpu, cuda or cuda:N")


# --------------------------------------------------------------------------- building

def model_from_config(family: str, config: dict, contract: dict | InputContract | None = None,
                      label_names: list[str] | None = None) -> torch.nn.Module:
    """Build an (uninitialised-weights) model of ``family`` from its stored config."""
    module = FAMILY_MODULES.get(family)
    if module is None:
        raise CheckpointError(f"unknown model family {family!r}", f"known: {', '.join(FAMILY_MODULES)}")
    mod = importlib.import_module(module)
    if isinstance(contract, dict):
        contract = InputContract.from_dict(contract)
    try:
        return mod.model_from_config(config, contract=contract, label_names=label_names)
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"invalid {family} config: {exc}") from None


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- native format

def _extras(model: torch.nn.Module) -> dict:
    extra = getattr(model, "extra", None)
    if extra is None:
        extra = {}
        try:
            model.extra = extra
        except AttributeError:
            pass
    return extra


def checkpoint_metadata(model: torch.nn.Module, **extra: Any) -> dict:
    from ecgtool import __version__

    extras = {**_extras(model), **extra}
    prov = dict(extras.pop("provenance", None) or {})
    prov.setdefault("source", None)
    prov.setdefault("importer", None)
    prov["saved_by"] = f"ecgtool {__version__}"
    prov["saved_at"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    thresholds = extras.pop("thresholds", None)
    if thresholds is not None:
        thresholds = [float(t) for t in (thresholds.tolist() if hasattr(thresholds, "tolist") else thresholds)]
    temperature = extras.pop("temperature", None)
    return {
        "format_version": FORMAT_VERSION,
        "family": model.family,
        "config": model.config,
        "contract": model.contract.to_dict(),
        "label_names": list(model.label_names) if model.label_names is not None else None,
        "thresholds": thresholds,
        "temperature": float(temperature) if temperature is not None else None,
        "provenance": prov,
        "extra": extras,
    }


def save_checkpoint(model: torch.nn.Module, path: str | Path, **extra: Any) -> Path:
    """Write ``model`` as a native checkpoint (atomically: a temporary file, then a rename).

    ``extra`` (``thresholds=``, ``temperature=``, ``provenance=``, or anything
    JSON-serialisable) is merged over ``model.extra`` and stored in the metadata.
    """
    path = Path(path)
    meta = checkpoint_metadata(model, **extra)
    try:
        text = json.dumps(meta)
    except TypeError as exc:
        raise UsageError(f"checkpoint metadata is not JSON-serialisable: {exc}") from None
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    from safetensors.torch import save

    from ecgtool.io.files import write_bytes_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, save(tensors, metadata={META_KEY: text}))
    return path


def read_safetensors_header(path: str | Path) -> dict | None:
    """The JSON header of a safetensors file, or None if the bytes are not one."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return None
            (n,) = struct.unpack("<Q", head)
            size = os.fstat(f.fileno()).st_size
            if n < 2 or n > _MAX_HEADER or 8 + n > size:
                return None
            raw = f.read(n)
    except OSError:
        return None
    if not raw.lstrip().startswith(b"{"):
        return None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        return None
    return header if isinstance(header, dict) else None


def read_metadata(path: str | Path) -> dict:
    """The ``ecgtool`` metadata of a native checkpoint (no tensors read)."""
    header = read_safetensors_header(path)
    if header is None:
        raise CheckpointError(f"{path}: not a safetensors file")
    meta = (header.get("__metadata__") or {}).get(META_KEY)
    if meta is None:
        raise CheckpointError(f"{path}: safetensors file without ecgtool metadata",
                              "it was not written by ecgtool; import released files with 'ecgtool models import'")
    try:
        meta = json.loads(meta)
    except ValueError as exc:
        raise CheckpointError(f"{path}: ecgtool metadata is not valid JSON ({exc})") from None
    for key in ("family", "config", "contract"):
        if key not in meta:
            raise CheckpointError(f"{path}: ecgtool metadata lacks {key!r}")
    if int(meta.get("format_version", 1)) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {meta['format_version']} is newer than this ecgtool "
                              f"reads ({FORMAT_VERSION})", "upgrade ecgtool")
    return meta


def check_state_dict(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Every expected key present with its shape and no key left over; one error listing all differences."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    shapes = [f"{k} {tuple(tensors[k].shape)} (expected {tuple(v.shape)})" for k, v in expected.items()
              if k in tensors and tuple(tensors[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        for name, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)):
            if items:
                parts.append(f"{len(items)} {name}: " + ", ".join(items[:12])
                             + (f", … ({len(items)} in all)" if len(items) > 12 else ""))
        raise CheckpointError(f"{source}: tensors do not match the model config: " + "; ".join(parts))


def load_checkpoint(path: str | Path, device: str | torch.device | None = None) -> torch.nn.Module:
    """Load a native checkpoint; the model comes back in eval mode with ``extra`` attached."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    meta = read_metadata(path)
    model = model_from_config(meta["family"], meta["config"], meta["contract"], meta.get("label_names"))
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read tensors ({exc})", "the file may be truncated; write it again") from None
    check_state_dict(model, tensors, str(path))
    model.load_state_dict(tensors, strict=True)
    extra = dict(meta.get("extra") or {})
    for key in KNOWN_EXTRAS:
        if meta.get(key) is not None:
            extra[key] = meta[key]
    model.extra = extra
    model.eval()
    if device is not None:
        model.to(resolve_device(device))
    return model


# --------------------------------------------------------------------------- detection and dispatch

def _pickle_strings(data: bytes, limit: int = 200_000) -> set[str]:
    """Unicode strings in a pickle stream, read with pickletools (nothing is executed)."""
    found: set[str] = set()
    try:
        for i, (op, arg, _pos) in enumerate(pickletools.genops(data)):
            if isinstance(arg, str):
                found.add(arg)
            if i > limit:
                break
    except Exception:  # noqa: BLE001 - a damaged stream: keep what was read
        pass
    return found


def sniff(path: str | Path) -> str:
    """What a file is, from its bytes: ``safetensors``, ``ecgfounder``, ``fairseq``, ``torch`` or ``unknown``."""
    path = Path(path)
    if read_safetensors_header(path) is not None:
        return "safetensors"
    with open(path, "rb") as f:
        head = f.read(4)
    strings: set[str] = set()
    if head == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as z:
                pkl = [n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
                if not pkl:
                    return "unknown"
                strings = _pickle_strings(z.read(pkl[0]))
        except (zipfile.BadZipFile, OSError, EOFError):
            return "torch"  # a damaged torch zip: the importers say what is wrong
    elif head[:1] == b"\x80":  # legacy torch.save: pickles one after another
        with open(path, "rb") as f:
            strings = _pickle_strings(f.read(64 * 1024 * 1024))
    else:
        return "unknown"
    if "first_conv.conv.weight" in strings or any(s.startswith("module.first_conv.") for s in strings):
        return "ecgfounder"
    if "cfg" in strings or "args" in strings or any(s.startswith("encoder.layers.") for s in strings):
        return "fairseq"
    return "torch"


def _load_fairseq(path: Path) -> torch.nn.Module:
    try:
        mod = importlib.import_module("ecgtool.models.import_fairseq")
    except ModuleNotFoundError:
        raise CheckpointError(f"{path}: a fairseq-signals checkpoint, but this ecgtool has no ECG-FM importer") from None
    return mod.load_fairseq_checkpoint(path)


def load_model(spec: str | Path, *, allow_random: bool = False, device: str | torch.device | None = None,
               **overrides: Any) -> torch.nn.Module:
    """A model from a registry name, a native ``.safetensors``, a fairseq ``.pt`` or an ECGFounder ``.pth``.

    A registry name builds the architecture with random weights, which is only
    allowed with ``allow_random=True`` (tests, training from scratch).
    """
    from ecgtool.models.registry import _REGISTRY, list_models, model_info

    text = str(spec)
    path = Path(text).expanduser()
    if overrides and path.is_file():
        raise UsageError("config overrides apply only to registry names, not to checkpoints")
    if path.is_file():
        kind = sniff(path)
        if kind == "safetensors":
            model = load_checkpoint(path)
        elif kind == "ecgfounder":
            from ecgtool.models.import_ecgfounder import load_ecgfounder_checkpoint

            model = load_ecgfounder_checkpoint(path)
        elif kind == "fairseq":
            model = _load_fairseq(path)
            if not hasattr(model, "extra"):
                model.extra = {}
        elif kind == "torch":
            raise CheckpointError(f"{path}: a PyTorch file, but neither an ECGFounder nor a fairseq-signals checkpoint",
                                  "ecgtool reads its own .safetensors, ECGFounder .pth and fairseq-signals .pt files")
        else:
            raise CheckpointError(f"{path}: not a model checkpoint (neither safetensors nor a PyTorch file)",
                                  "pass a registry name ('ecgtool models'), a .safetensors, a fairseq .pt or an ECGFounder .pth")
    elif path.is_dir():
        raise InputError(f"{path}: is a directory, not a checkpoint")
    else:
        list_models()
        if text not in _REGISTRY:
            if os.sep in text or path.suffix.lower() in (".safetensors", ".pt", ".pth", ".ckpt", ".bin"):
                raise InputError(f"{text}: no such checkpoint file")
            model_info(text)  # raises the unknown-model error with suggestions
        if not allow_random:
            from ecgtool.models.default import default_model_path

            shipped = default_model_path()
            if text == "ecgtool-default" and shipped is not None:
                return load_model(shipped, device=device)  # the weights that ship with ecgtool
            raise CheckpointError(
                f"{text!r} names an architecture in the registry, which carries no trained weights",
                f"pass a checkpoint with -m instead ({RELEASED_HINT}), or leave out -m (or give -m ecgtool-default) "
                "for the model that ships with ecgtool")
        from ecgtool.models.registry import create_model

        model = create_model(text, **overrides)
        if not hasattr(model, "extra"):
            model.extra = {}
        model.extra.setdefault("provenance", {"source": None, "importer": None, "random_init": text})
    model.eval()
    if device is not None:
        model.to(resolve_device(device))
    return model


# --------------------------------------------------------------------------- descriptions

def _summary(model: torch.nn.Module) -> dict[str, Any]:
    c = model.contract
    d: dict[str, Any] = {
        "family": model.family,
        "parameters": parameter_count(model),
    }
    released = getattr(model, "released_file_parameters", None)
    if released is not None:
        d["released_file_parameters"] = int(released)
    d.update({
        "fs": c.fs, "leads": list(c.leads), "n_samples": c.n_samples, "seconds": c.seconds,
        "normalisation": c.normalisation, "preset": c.preset,
        "n_classes": len(model.label_names) if model.label_names is not None else getattr(model, "n_classes", None),
        "label_names": list(model.label_names) if model.label_names is not None else None,
        "config": model.config,
    })
    return d


def build_on_meta(name: str, **overrides: Any) -> torch.nn.Module:
    """A registered variant built on the meta device (shapes only, no memory, no init time)."""
    from ecgtool.models.registry import create_model

    with torch.device("meta"):
        return create_model(name, **overrides)


def describe_model(spec: str | Path) -> dict[str, Any]:
    """Name, family, parameter count, input contract, outputs (and provenance for a checkpoint)."""
    from ecgtool.models.registry import model_info

    path = Path(str(spec)).expanduser()
    if path.is_file():
        model = load_model(path)
        d = {"name": path.name, "path": str(path), **_summary(model), "random_weights": False}
        for key in KNOWN_EXTRAS:
            if model.extra.get(key) is not None:
                d[key] = model.extra[key]
        return d
    info = model_info(str(spec))
    model = build_on_meta(info.name)
    return {"name": info.name, "description": info.description, **_summary(model), "random_weights": True}


def list_model_summaries(pattern: str | None = None) -> list[dict[str, Any]]:
    from ecgtool.models.registry import list_models

    return [describe_model(name) for name in list_models(pattern)]


def parse_label_names(spec: str) -> list[str]:
    """Label names from ``--labels``: 'mimic-iv-ecg' (the released ECG-FM classifier's 17),
    a text file with one name per line, or comma-separated names."""
    text = spec.strip()
    if text.lower() in ("mimic-iv-ecg", "mimic", "ecgfm-17"):
        from ecgtool.models.ecgfm import MIMIC_IV_ECG_LABELS

        return list(MIMIC_IV_ECG_LABELS)
    path = Path(text).expanduser()
    if path.is_file():
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"--labels {text}: cannot read ({e})") from None
        names = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    else:
        names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UsageError(f"--labels {text!r}: no label names",
                         "give comma-separated names, a file with one name per line, or 'mimic-iv-ecg'")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise UsageError(f"--labels: repeated label names: {', '.join(dup)}")
    return names


def _attach_label_names(model: torch.nn.Module, names: list[str], src: Path) -> None:
    n_out = model.n_classes
    if not n_out:
        raise UsageError(f"{src}: the checkpoint has no classifier head, so --labels does not apply",
                         "label names belong to a finetuned checkpoint")
    if len(names) != n_out:
        raise UsageError(f"--labels: {len(names)} names for the {n_out} outputs of {src.name}",
                         "give one name per output, in the order of the outputs")
    model.label_names = list(names)


def import_released(src: str | Path, output: str | Path, label_names: list[str] | None = None) -> list[str]:
    """Convert a released checkpoint (ECGFounder .pth, fairseq-signals .pt) to a native one.

    ``label_names`` (one per output) replaces the names the file carries (none
    for fairseq-signals files; ECGFounder's 150 are known). Returns report
    lines: what was read and what was written.
    """
    src, output = Path(src), Path(output)
    if not src.is_file():
        raise InputError(f"{src}: no such file")
    if output.exists() and output.resolve() == src.resolve():
        raise UsageError(f"-o {output}: would overwrite the source checkpoint")
    kind = sniff(src)
    if kind == "ecgfounder":
        from ecgtool.models.import_ecgfounder import import_ecgfounder

        model, report = import_ecgfounder(src)
        lines = report.lines()
    elif kind == "fairseq":
        model = _load_fairseq(src)
        prov = getattr(model, "extra", {}).get("provenance", {})
        cfg = model.config
        lines = [f"read {src} (fairseq-signals, sha256 {prov.get('source_sha256', '?')})",
                 "  " + ", ".join(f"{k}={prov[k]}" for k in ("fairseq_model", "num_updates", "criterion")
                                  if prov.get(k) is not None),
                 f"  ECG-FM: {cfg.get('encoder_layers')} layers, dim {cfg.get('encoder_embed_dim')}, "
                 f"{cfg.get('encoder_attention_heads')} heads, {parameter_count(model):,} parameters"]
    elif kind == "safetensors":
        raise UsageError(f"{src}: already a safetensors file; nothing to import",
                         "use it directly with -m, or 'ecgtool models info' to inspect it")
    elif kind == "torch":
        raise CheckpointError(f"{src}: a PyTorch file, but neither an ECGFounder nor a fairseq-signals checkpoint")
    else:
        raise CheckpointError(f"{src}: not a checkpoint (neither a PyTorch file nor safetensors)")
    if label_names is not None:
        _attach_label_names(model, label_names, src)
        shown = ", ".join(label_names[:4]) + (", …" if len(label_names) > 4 else "")
        lines.append(f"  label names: {shown} ({len(label_names)})")
    save_checkpoint(model, output)
    n = len(model.state_dict())
    lines.append(f"wrote {output} ({n} tensors, {parameter_count(model):,} parameters, "
                 f"{output.stat().st_size:,} bytes)")
    return lines
