"""What embed, predict and saliency share: opening the model, the input, the run."""

from __future__ import annotations

import logging
from pathlib import Path

from ecgtool.errors import UsageError

log = logging.getLogger("ecgtool")


def open_model(spec: str | None, device: str, allow_random: bool = False):
    """(model, torch device) for ``-m``; without ``-m`` the bundled default model."""
    from ecgtool.models.checkpoint import load_model
    from ecgtool.models.devices import resolve_device

    if spec is None:
        from ecgtool.models.default import default_model_path

        path = default_model_path()
        if path is None:
            raise UsageError("no model given", "pass -m CHECKPOINT (see 'ecgtool models')")
        spec = str(path)
    dev = resolve_device(device)
    from ecgtool.io.threads import chosen_threads

    if chosen_threads() is not None:
        import torch

        torch.set_num_threads(chosen_threads())
    model = load_model(spec, allow_random=allow_random, device=dev)
    return model, dev


def open_input(src, batch_size: int, errors=None):
    """A TableReader over a table (or several read as one), or over raw ECG files converted on the fly.

    ``errors`` (the command's ``--on-error`` policy) also receives the records
    that cannot be converted, so they count, and ``fail`` stops at them."""
    from ecgtool.io import open_table
    from ecgtool.io.stream import sniff
    from ecgtool.io.threads import default_threads

    from ecgtool.io.stream import TABLE_SUFFIXES

    if src is None or (isinstance(src, (list, tuple)) and not src):
        src = "-"
    if isinstance(src, (list, tuple)):
        if len(src) == 1:
            src = src[0]
        else:
            tables = [s for s in src if Path(s).is_file() and sniff(_head(Path(s))) not in (None, "npy")]
            if len(tables) == len(src):
                return open_table(list(src), batch_size=batch_size, threads=default_threads())
            if tables:
                raise UsageError(f"inputs mix tables ({tables[0]}) and raw ECG files",
                                 "give tables, or raw files and folders (converted on the fly), not both")
            from ecgtool.convert import RecordsReader

            return RecordsReader(list(src), batch_size, errors)
    p = Path(src)
    tables_only = p.is_dir() and any(q.suffix.lower() in TABLE_SUFFIXES for q in p.iterdir()) and not any(
        q.suffix.lower() in (".hea", ".xml", ".dcm", ".csv", ".npy", ".mat", ".edf", ".scp") for q in p.iterdir())
    if src != "-" and not tables_only and (p.is_dir() or (p.is_file() and sniff(_head(p)) in (None, "npy"))):
        from ecgtool.convert import RecordsReader

        return RecordsReader([src], batch_size, errors)
    # Parquet row groups are decoded in parallel, so that reading keeps up with a GPU
    return open_table(src, batch_size=batch_size, threads=default_threads())


def _head(p: Path) -> bytes:
    with open(p, "rb") as fh:
        return fh.read(8)
