"""Option types shared by every command (one definition, used everywhere)."""

from __future__ import annotations

from typing import Optional

import typer
from typing_extensions import Annotated

Input = Annotated[str, typer.Argument(metavar="INPUT", help="Input table (Parquet, Arrow IPC or NPZ); '-' for stdin.")]
Inputs = Annotated[
    Optional[list[str]],
    typer.Argument(metavar="INPUT...", help="Input tables (Parquet, Arrow IPC or NPZ; several, a folder of part files "
                   "or a glob are read as one table) or raw ECG files and folders (converted on the fly); '-' "
                   "(the default) for stdin."),
]
Output = Annotated[
    str,
    typer.Option("-o", "--output", metavar="FILE", help="Output file; '-' for stdout (Arrow IPC stream unless -O says otherwise)."),
]
OutputFormat = Annotated[
    Optional[str],
    typer.Option(
        "-O",
        "--output-format",
        metavar="FORMAT",
        help="parquet, arrow or npz (default: from the -o extension; Arrow on stdout).",
    ),
]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, metavar="N", help="Records per batch (bounds memory).")]
OnError = Annotated[
    Optional[str],
    typer.Option(
        "--on-error",
        metavar="POLICY",
        help="fail: stop at the first bad record; skip: drop bad records and exit 0. "
        "Default: drop them, exit 3 if any was dropped.",
    ),
]
Workers = Annotated[int, typer.Option("-j", "--workers", min=1, metavar="N", help="Worker processes.")]
Device = Annotated[str, typer.Option("--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N.")]
Model = Annotated[
    Optional[str],
    typer.Option("-m", "--model", metavar="MODEL", help="A registered model name, a .safetensors checkpoint, or a released .pt/.pth."),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
Precision = Annotated[str, typer.Option("--precision", metavar="PRECISION", help="auto (bf16 where the CPU has AVX512-BF16/AMX or the GPU has bf16, else fp32; said once), fp32 or bf16 (autocast).")]
Shard = Annotated[
    Optional[str],
    typer.Option(
        "--shard",
        metavar="K/N",
        help="K/N: process shard K of N (records split by a stable hash of record_id; the output name gets "
        ".shardKofN, or replaces {shard}). Default: from SLURM_ARRAY_TASK_ID/COUNT when set.",
    ),
]
NoShard = Annotated[bool, typer.Option("--no-shard", help="Ignore SLURM array variables: process every record.")]
