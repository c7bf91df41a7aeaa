"""examples/slurm/embed_array.sbatch run locally as three array tasks: the shards' union is the unsharded run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from conftest import ROOT

SCRIPT = ROOT / "examples" / "slurm" / "embed_array.sbatch"


def _env(**kw) -> dict:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    for k in [k for k in env if k.startswith("SLURM_")]:
        del env[k]
    env.update({k: str(v) for k, v in kw.items()})
    return env


def test_array_shards_cover_the_unsharded_run(data_dir, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for hea in sorted((data_dir / "ptbxl-500" / "records100" / "00000").glob("*_lr.hea"))[:9]:
        for f in (hea, hea.with_suffix(".dat")):
            (raw / f.name).symlink_to(f)
    out = tmp_path / "out"
    for task in (1, 2, 3):
        r = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True,
                           env=_env(INPUT=raw, OUT=out, SLURM_ARRAY_TASK_ID=task, SLURM_ARRAY_TASK_MIN=1,
                                    SLURM_ARRAY_TASK_COUNT=3, SLURM_CPUS_PER_TASK=1))
        assert r.returncode == 0, r.stderr
        assert f"shard {task} of 3 from the SLURM array" in r.stderr
    parts = sorted((out / "embeddings").glob("emb.shard*of3.parquet"))
    assert len(parts) == 3
    # the same steps without an array
    whole = tmp_path / "whole"
    steps = [["convert", raw, "-o", whole / "rec.parquet"],
             ["preprocess", "--preset", "ecgtool-default", whole / "rec.parquet", "-o", whole / "seg.parquet"],
             ["embed", whole / "seg.parquet", "-o", whole / "emb.parquet"]]
    whole.mkdir()
    for step in steps:
        r = subprocess.run([sys.executable, "-m", "ecgtool", "-q", *map(str, step)], capture_output=True, text=True,
                           env=_env())
        assert r.returncode == 0, r.stderr
    ref = pq.read_table(whole / "emb.parquet")
    got = {}
    for p in parts:
        t = pq.read_table(p)
        for rid, e in zip(t.column("record_id").to_pylist(), t.column("embedding").to_pylist()):
            assert rid not in got, f"{rid} in two shards"
            got[rid] = e
    assert sorted(got) == sorted(ref.column("record_id").to_pylist())
    for rid, e in zip(ref.column("record_id").to_pylist(), ref.column("embedding").to_pylist()):
        np.testing.assert_allclose(got[rid], e, atol=1e-5)
    # the parts read as one table
    r = subprocess.run([sys.executable, "-m", "ecgtool", "info", str(out / "embeddings")], capture_output=True,
                       text=True, env=_env())
    assert r.returncode == 0 and "9 rows" in r.stdout
