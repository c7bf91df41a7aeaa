"""What embed, predict and saliency share: opening the model, the input, the run."""

from __future__ import annotations

import logging
from pathlib import Path

from ecgtool.errors import UsageError

log = logging.getLogger("ecgtool")


def open_model(spec: str | None, device: str, allow_random: bool = False):
    """(model, torch device) for ``-m``; without ``-m`` the bundled default model."""
    from ecgtool.models.checkpoint import load_model, resolve_device

    if spec is None:
        from ecgtool.models.default import default_model_path

        path = default_model_path()
        if path is None:
            raise UsageError("no model given", "pass -m CHECKPOINT (see 'ecgtool models')")
        spec = str(path)
    dev = resolve_device(device)
    model = load_model(spec, allow_random=allow_random, device=dev)
    return model, dev


def open_input(src: str, batch_size: int, errors=None):
    """A TableReader over a table, or over raw ECG files converted on the fly.

    ``errors`` (the command's ``--on-error`` policy) also receives the records
    that cannot be converted, so they count, and ``fail`` stops at them."""
    from ecgtool.io import open_table
    from ecgtool.io.stream import sniff

    p = Path(src)
    if src != "-" and (p.is_dir() or (p.is_file() and sniff(_head(p)) in (None, "npy"))):
        return RawRecords([src], batch_size, errors)
    return open_table(src, batch_size=batch_size)


def _head(p: Path) -> bytes:
    with open(p, "rb") as fh:
        return fh.read(8)


class RawRecords:
    """Raw ECG files read as a record table on the fly (what 'ecgtool convert' would write)."""

    format = "raw"

    def __init__(self, inputs: list[str], batch_size: int, errors=None):
        from ecgtool.convert import discover, output_schema
        from ecgtool.errors import InputError
        from ecgtool.io.schema import TableMeta

        self._found = discover(inputs)
        if not self._found.items:
            raise InputError(f"{', '.join(inputs)}: neither a table nor ECG records",
                             "give a table, or WFDB .hea / HL7 aECG .xml / DICOM .dcm files")
        self.schema = output_schema([])
        self.meta = TableMeta(kind="records")
        self.num_rows = len(self._found.items)
        self._batch_size = batch_size
        self._errors = errors

    def __iter__(self):
        from ecgtool.convert import read_batches
        from ecgtool.errors import EcgtoolError, RecordError

        for res in read_batches(self._found.items, workers=1, batch_size=self._batch_size, options={}):
            if res.fatal:
                raise EcgtoolError(res.fatal[1], res.fatal[2])
            for rid, cause, hint in res.errors:
                if self._errors is not None:
                    self._errors(RecordError(rid, cause, hint))
                else:
                    log.error("skipped %s", RecordError(rid, cause, hint))
            yield from res.batches

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass
