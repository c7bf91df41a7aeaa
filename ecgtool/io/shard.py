"""Shards: ``--shard K/N`` splits a table's records between N jobs by a stable hash of the record id.

With no ``--shard``, a SLURM array task takes its shard from the environment
(``SLURM_ARRAY_TASK_ID``, ``_MIN``, ``_STEP``, ``_COUNT``: K = (ID - MIN) / STEP + 1,
N = COUNT) and says so on stderr; ``--no-shard`` ignores the environment. An
array whose tasks cannot be numbered 1..N that way is a usage error that says
what to pass. Shard K of every step holds the same records, whatever the step.
"""

from __future__ import annotations

import logging
import os
import zlib
from typing import Mapping

from ecgtool.errors import UsageError

log = logging.getLogger("ecgtool")

SLURM_VARS = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_STEP", "SLURM_ARRAY_TASK_COUNT")


def shard_from_env(env: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """The shard a SLURM array task stands for, or None outside an array."""
    env = os.environ if env is None else env
    tid, count = env.get("SLURM_ARRAY_TASK_ID"), env.get("SLURM_ARRAY_TASK_COUNT")
    if tid is None or count is None:
        return None
    try:
        tid_i, n = int(tid), int(count)
        lo = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        step = int(env.get("SLURM_ARRAY_TASK_STEP", "1"))
    except ValueError:
        raise UsageError(f"SLURM array variables are not numbers ({', '.join(f'{v}={env.get(v)}' for v in SLURM_VARS if v in env)})",
                         "pass --shard K/N, or --no-shard to ignore them") from None
    said = ", ".join(f"{v}={env[v]}" for v in SLURM_VARS if v in env)
    offset = tid_i - lo
    if step < 1 or offset < 0 or offset % step or not 1 <= offset // step + 1 <= n:
        raise UsageError(
            f"cannot number this SLURM array task as a shard ({said}): K = (ID - MIN) / STEP + 1 must be a whole "
            f"number from 1 to {n}",
            "pass the shard yourself, e.g. --shard $(( (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) / STEP + 1 ))/N, "
            "or --no-shard to run on every record")
    k = offset // step + 1
    log.warning("shard %d of %d from the SLURM array (%s); --shard K/N overrides it, --no-shard ignores it", k, n, said)
    return k, n


def parse_shard(text: str | None, use_env: bool = True) -> tuple[int, int] | None:
    """``K/N`` (1-based K) or None; without ``text``, the SLURM array's shard unless ``use_env`` is False."""
    if text is None:
        return shard_from_env() if use_env else None
    try:
        k, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise UsageError(f"--shard {text!r}: expected K/N, two whole numbers with 1 <= K <= N, e.g. 1/4") from None
    if n < 1:
        raise UsageError(f"--shard {text}: N (the number of shards) must be at least 1", "e.g. --shard 1/4")
    if not 1 <= k <= n:
        raise UsageError(f"--shard {text}: K must be between 1 and {n} (shards are numbered 1 to N)",
                         f"e.g. --shard 1/{n} ... --shard {n}/{n}")
    return k, n


def in_shard(record_id: str, shard: tuple[int, int] | None) -> bool:
    """Records are split between shards by a stable hash of their id, so that
    all windows and segments of one record land in the same shard."""
    if shard is None:
        return True
    k, n = shard
    return zlib.crc32(str(record_id).encode()) % n == k - 1


def shard_batches(batches, shard: tuple[int, int] | None, column: str = "record_id"):
    """Only the rows of ``batches`` (Arrow record batches) whose id (``column``) falls in ``shard``."""
    if shard is None:
        yield from batches
        return
    from ecgtool.io import arrays as A

    seen = kept = 0
    for batch in batches:
        ids = batch.column(batch.schema.get_field_index(column)).to_pylist()
        keep = [i for i, r in enumerate(ids) if in_shard(r, shard)]
        seen += len(ids)
        kept += len(keep)
        if len(keep) == batch.num_rows:
            yield batch
        elif keep:
            yield A.take(batch, keep)
    if seen and not kept:
        log.warning("shard %d of %d holds none of the %d input rows: its output is empty", *shard, seen)


def shard_path(path: str, shard: tuple[int, int] | None) -> str:
    """``emb.parquet`` -> ``emb.shard1of4.parquet`` (``{shard}`` in the name is replaced instead).

    A folder output (``out/``: :func:`ecgtool.io.parts.is_folder_output`) gets part files of the shard's own
    names, so that N shards write into one folder: ``out/part-shard1of4-{part}`` (``part-shard1of4-00000.parquet``,
    ...); a part-file template ``out/x-{part}.parquet`` becomes ``out/x-{part}.shard1of4.parquet``."""
    if shard is None or path == "-":
        return path
    k, n = shard
    tag = f"shard{k}of{n}"
    if "{shard}" in path:
        return path.replace("{shard}", tag)
    from ecgtool.io.parts import PLACEHOLDER, is_folder_output

    if is_folder_output(path) and PLACEHOLDER not in os.path.basename(path):
        return os.path.join(path, f"part-{tag}-{PLACEHOLDER}")
    root, ext = os.path.splitext(path)
    return f"{root}.{tag}{ext}"
