"""What every checkpoint reader shares (a leaf module: it imports nothing else from ecgtool.models).

* :func:`safe_load` - ``torch.load`` through a restricted unpickler: tensors,
  containers, plain values and numpy scalars / dtypes / arrays (under their
  numpy 1.x *and* 2.x module names) are rebuilt; a class named in ``stubs``
  (e.g. a trainer's own config classes) becomes an inert :class:`Stub` that is
  never imported or run; any other global refuses the file before anything
  runs.
* :func:`sha256_file`.
* :func:`match_state_dict` - one error that lists missing, unexpected and
  mis-shaped tensors together.
* :func:`provenance` - the one shape of the provenance record every importer writes.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

from ecgtool.errors import CheckpointError

# (module, name) pairs a checkpoint may name, rebuilt as themselves.
_TORCH_GLOBALS = {
    ("torch._utils", "_rebuild_tensor"), ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor_v3"), ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"), ("torch._utils", "_rebuild_wrapper_subclass"),
    ("torch._tensor", "_rebuild_from_type_v2"), ("torch", "Size"), ("torch", "device"),
    ("torch.nn.parameter", "Parameter"), ("torch", "Tensor"),
}
_PLAIN_GLOBALS = {
    ("collections", "OrderedDict"), ("collections", "defaultdict"), ("builtins", "set"),
    ("builtins", "frozenset"), ("builtins", "slice"), ("builtins", "complex"), ("builtins", "range"),
    ("builtins", "bytearray"), ("builtins", "tuple"), ("builtins", "list"), ("builtins", "dict"),
    ("builtins", "int"), ("builtins", "float"), ("builtins", "str"), ("builtins", "bool"),
    ("_codecs", "encode"), ("argparse", "Namespace"), ("copyreg", "_reconstructor"),
    ("builtins", "object"), ("datetime", "datetime"), ("datetime", "timedelta"), ("datetime", "date"),
    ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "Path"),
}
_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
_NUMPY_NAMES = ("scalar", "_reconstruct")


class Stub:
    """An inert stand-in for an object whose class a pickle names but ecgtool must not import.

    ``qualified_name`` is the class the pickle named; ``args`` / ``kwargs`` what it
    would have been constructed with; ``state`` what ``__setstate__`` received.
    """

    qualified_name = "?"

    def __init__(self, *args, **kwargs):
        self.args = args
        self.kwargs = kwargs
        self.state: Any = None
        self.items: list = []

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):  # SETITEMS on a dict subclass
        self.items.append((key, value))

    def append(self, value):  # APPENDS on a list subclass
        self.items.append(value)

    def extend(self, values):
        self.items.extend(values)

    def __repr__(self) -> str:
        return f"<{self.qualified_name} (not loaded)>"


def _stub_class(module: str, name: str) -> type:
    return type(name, (Stub,), {"qualified_name": f"{module}.{name}"})


def _numpy_global(module: str, name: str):
    import numpy as np

    if module in _NUMPY_MODULES and name in _NUMPY_NAMES:
        core = getattr(np, "_core", None)
        mod = getattr(core, "multiarray", None) if core is not None else None
        if mod is None or not hasattr(mod, name):
            mod = np.core.multiarray
        return getattr(mod, name)
    if module == "numpy" and name in ("dtype", "ndarray"):
        return getattr(np, name)
    if module == "numpy.dtypes" and name.endswith("DType"):
        dt = getattr(getattr(np, "dtypes", None), name, None)
        if isinstance(dt, type) and issubclass(dt, np.dtype):
            return dt
    return None


def _make_unpickler_module(source: str, stubs: tuple[str, ...]):
    """A pickle-like module whose Unpickler only builds the allowed globals (torch.load's pickle_module)."""
    stubbed: list[str] = []

    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            # Python 2 names (__builtin__.unicode, copy_reg, ...), mapped as pickle maps them for
            # protocol < 3 (no Python 3 module has these names, so the mapping is always safe)
            import _compat_pickle

            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
            if (module, name) in _TORCH_GLOBALS or (module, name) in _PLAIN_GLOBALS:
                return super().find_class(module, name)
            if module == "torch" and name.endswith(("dtype", "Storage")) or module == "torch" and name in (
                    "float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8",
                    "bool", "complex64", "long", "half", "float", "double"):
                return super().find_class(module, name)
            if module.startswith("numpy"):
                obj = _numpy_global(module, name)
                if obj is not None:
                    return obj
            if any(module == s or module.startswith(s + ".") for s in stubs):
                stubbed.append(f"{module}.{name}")
                return _stub_class(module, name)
            raise CheckpointError(
                f"{source}: refused to unpickle: it would call {module}.{name}, which is not a tensor or plain value",
                "a released checkpoint holds only tensors and plain values; this file could run code on load")

    class Module:
        Unpickler = RestrictedUnpickler
        __name__ = "ecgtool_restricted_pickle"

        @staticmethod
        def load(f, **kw):
            return RestrictedUnpickler(f, **kw).load()

    Module.stubbed = stubbed
    return Module


def safe_load(path: str | os.PathLike, stubs: Iterable[str] = (), mmap: bool | None = None) -> Any:
    """Read a ``torch.save`` file without running code; :class:`CheckpointError` for anything else.

    ``stubs``: module prefixes whose classes are replaced by :class:`Stub` (never imported).
    """
    import torch

    path = Path(path)
    source = str(path)
    if not path.exists():
        raise CheckpointError(f"{source}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{source}: is a directory, not a checkpoint file")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if len(head) < 4:
        raise CheckpointError(f"{source}: file is empty or truncated, not a PyTorch checkpoint")
    is_zip = head[:2] == b"PK"
    if is_zip and not zipfile.is_zipfile(path):
        raise CheckpointError(f"{source}: truncated or corrupt PyTorch checkpoint (broken zip archive)",
                              "download the file again")
    if not is_zip and head[:1] != b"\x80":
        raise CheckpointError(f"{source}: not a PyTorch checkpoint (neither a zip archive nor a pickle)")
    module = _make_unpickler_module(source, tuple(stubs))
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=module,
                          mmap=is_zip if mmap is None else mmap)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - every other failure is a damaged file
        text = str(exc).strip().splitlines()
        first = text[0][:200] if text else type(exc).__name__
        truncated = isinstance(exc, EOFError) or any(w in str(exc).lower() for w in (
            "ran out of input", "truncated", "unexpected end", "failed finding central directory",
            "pickle data was truncated"))
        if truncated:
            raise CheckpointError(f"{source}: truncated PyTorch checkpoint (it ends early: {first})",
                                  "download the file again") from None
        raise CheckpointError(f"{source}: not a readable PyTorch checkpoint ({type(exc).__name__}: {first})",
                              "the file may be damaged; download it again") from None


def pickle_strings(data: bytes, limit: int = 200_000, complete: list | None = None) -> set[str]:
    """Unicode strings in a pickle stream, read with pickletools (nothing is executed).

    ``complete`` (a list) gets False appended when the stream ends before its STOP opcode."""
    import pickletools

    found: set[str] = set()
    try:
        for i, (_op, arg, _pos) in enumerate(pickletools.genops(data)):
            if isinstance(arg, str):
                found.add(arg)
            if i > limit:
                break
    except Exception:  # noqa: BLE001 - a damaged stream: keep what was read
        if complete is not None:
            complete.append(False)
    return found


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _shape(v) -> tuple[int, ...]:
    return tuple(int(s) for s in (v.shape if hasattr(v, "shape") else v))


def state_dict_problems(expected: Mapping[str, Any], tensors: Mapping[str, Any]) -> dict[str, list[str]]:
    """``missing``, ``unexpected`` and ``mis-shaped`` keys (values: tensors or shapes)."""
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    shapes = [f"{k} {_shape(tensors[k])} (expected {_shape(v)})" for k, v in expected.items()
              if k in tensors and _shape(tensors[k]) != _shape(v)]
    return {"missing": missing, "unexpected": unexpected, "mis-shaped": shapes}


def match_state_dict(expected: Mapping[str, Any], tensors: Mapping[str, Any], source: str,
                     what: str = "the model config") -> None:
    """Every expected key present with its shape and no key left over; else one error listing them all."""
    problems = state_dict_problems(expected, tensors)
    parts = []
    for name, items in problems.items():
        if items:
            parts.append(f"{len(items)} {name}: " + ", ".join(items[:12])
                         + (f", … ({len(items)} in all)" if len(items) > 12 else ""))
    if parts:
        raise CheckpointError(f"{source}: tensors do not match {what}: " + "; ".join(parts))


def provenance(path: str | os.PathLike | None, importer: str | None, **fields: Any) -> dict[str, Any]:
    """The provenance record of an imported model: source file, sha256, importer, ecgtool version, time."""
    from ecgtool import __version__

    prov: dict[str, Any] = {
        "source": os.path.basename(str(path)) if path is not None else None,
        "sha256": sha256_file(path) if path is not None and Path(path).is_file() else None,
        "importer": importer,
        "ecgtool_version": __version__,
        "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    prov.update({k: v for k, v in fields.items() if v is not None})
    return prov


# --------------------------------------------------------------------------- sniffing

_MAX_HEADER = 100 * 1024 * 1024


def read_safetensors_header(path: str | os.PathLike) -> dict | None:
    """The JSON header of a safetensors file, or None if the bytes are not one."""
    import json
    import struct

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


class FileInfo:
    """What a checkpoint path is, read from its bytes once (importers' ``sniff`` look at this).

    ``kind``: ``safetensors``, ``torch`` (zip or legacy pickle), ``folder`` or ``unknown``;
    ``strings``: the strings of the (first) pickle, never executed; ``header``: a safetensors
    header; ``files``: a folder's file names; ``native``: an ecgtool safetensors checkpoint.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.kind = "unknown"
        self.strings: set[str] = set()
        self.header: dict | None = None
        self.files: set[str] = set()
        self.zip_names: list[str] = []
        self.damaged: str | None = None  # why the file cannot be whole (truncated zip or pickle)
        if self.path.is_dir():
            self.kind = "folder"
            self.files = {p.name for p in self.path.iterdir()}
            return
        header = read_safetensors_header(self.path)
        if header is not None:
            self.kind, self.header = "safetensors", header
            return
        try:
            with open(self.path, "rb") as f:
                head = f.read(4)
        except OSError:
            return
        if head == b"PK\x03\x04":
            self.kind = "torch"
            try:
                with zipfile.ZipFile(self.path) as z:
                    self.zip_names = z.namelist()
                    pkl = [n for n in self.zip_names if n.endswith("/data.pkl") or n == "data.pkl"]
                    if pkl:
                        self.strings = pickle_strings(z.read(pkl[0]))
                    else:
                        self.kind = "unknown"
            except (zipfile.BadZipFile, OSError, EOFError):
                self.damaged = "a broken zip archive: the file is truncated or damaged"
        elif head[:1] == b"\x80":
            self.kind = "torch"
            with open(self.path, "rb") as f:
                ended: list = []
                self.strings = pickle_strings(f.read(64 * 1024 * 1024), complete=ended)
            if ended:
                self.damaged = "its pickle stream ends early: the file is truncated"

    @property
    def native(self) -> bool:
        return self.kind == "safetensors" and "ecgtool" in ((self.header or {}).get("__metadata__") or {})

    def has_key_prefix(self, *prefixes: str) -> bool:
        """Does the pickle (or safetensors header) name a key starting with one of ``prefixes``?"""
        keys = self.strings if self.kind == "torch" else set(self.header or ())
        return any(s.startswith(p) for s in keys for p in prefixes)

    def __repr__(self) -> str:
        return f"FileInfo({str(self.path)!r}, kind={self.kind!r})"
