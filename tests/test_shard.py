"""Shards from --shard or a SLURM array: said on stderr, impossible numberings refused, --no-shard."""

from __future__ import annotations

import logging

import pytest

from ecgtool.errors import UsageError
from ecgtool.io.shard import in_shard, parse_shard, shard_from_env, shard_path


def test_slurm_array_shard_is_said(caplog):
    env = {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "3"}
    logging.getLogger("ecgtool").propagate = True
    with caplog.at_level(logging.WARNING, logger="ecgtool"):
        assert shard_from_env(env) == (2, 3)
    assert any("shard 2 of 3 from the SLURM array" in m and "SLURM_ARRAY_TASK_ID=2" in m for m in caplog.messages)


def test_stepped_arrays():
    # --array=0-6:2 -> IDs 0, 2, 4, 6 with MIN 0, STEP 2, COUNT 4: shards 1..4
    for tid, k in ((0, 1), (2, 2), (4, 3), (6, 4)):
        env = {"SLURM_ARRAY_TASK_ID": str(tid), "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_STEP": "2",
               "SLURM_ARRAY_TASK_COUNT": "4"}
        assert shard_from_env(env) == (k, 4)
    # a stepped array without STEP in the environment cannot be numbered: a usage error saying what to pass
    with pytest.raises(UsageError, match="--shard"):
        shard_from_env({"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": "4"})


def test_no_shard_and_explicit(monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    assert parse_shard(None, use_env=False) is None
    assert parse_shard("2/5") == (2, 5)
    for bad in ("0/3", "4/3", "x"):
        with pytest.raises(UsageError):
            parse_shard(bad)
    # the message names the valid range of K for the N given
    for bad, said in (("3/2", "between 1 and 2"), ("0/4", "between 1 and 4"), ("a/b", "K/N"), ("1/0", "at least 1")):
        with pytest.raises(UsageError, match=said):
            parse_shard(bad)
    ids = [f"r{i}" for i in range(300)]
    parts = [[r for r in ids if in_shard(r, (k, 3))] for k in (1, 2, 3)]
    assert sorted(sum(parts, [])) == sorted(ids) and all(parts)
    assert shard_path("emb.parquet", (1, 4)) == "emb.shard1of4.parquet"


def test_shards_of_preprocess_cover_the_unsharded_run(data_dir, tmp_path, cli):
    import pyarrow.parquet as pq

    heas = sorted((data_dir / "ptbxl-500" / "records500" / "00000").glob("*_hr.hea"))[:6]
    rec = tmp_path / "rec.parquet"
    assert cli(["convert", *heas, "-o", rec]).exit_code == 0
    assert cli(["preprocess", "--preset", "ecg-fm", rec, "-o", tmp_path / "all.parquet", "--no-shard"]).exit_code == 0
    for k in (1, 2, 3):
        r = cli(["preprocess", "--preset", "ecg-fm", rec, "--shard", f"{k}/3", "-o", tmp_path / "seg.parquet"])
        assert r.exit_code == 0, r.output
    whole = pq.read_table(tmp_path / "all.parquet").column("record_id").to_pylist()
    parts = [pq.read_table(tmp_path / f"seg.shard{k}of3.parquet").column("record_id").to_pylist() for k in (1, 2, 3)]
    assert sorted(sum(parts, [])) == sorted(whole)
    # the parts read back as one table, in one command
    r = cli(["info", str(tmp_path / "seg.shard*of3.parquet")])
    assert r.exit_code == 0 and f"{len(whole)} rows" in r.stdout


def test_shards_of_label_match_the_shards_of_convert(data_dir, tmp_path, cli, monkeypatch):
    """label --shard K/N keeps the records of shard K of every other step (the same hash of record_id), and a
    SLURM array task labels its own shard, saying so."""
    import pyarrow.parquet as pq

    heas = sorted((data_dir / "ptbxl-500" / "records100" / "00000").glob("*_lr.hea"))[:30]
    db = data_dir / "ptbxl-500" / "ptbxl_database.csv"
    rec = tmp_path / "rec.parquet"
    assert cli(["convert", *heas, "--join", db, "-o", rec]).exit_code == 0
    assert cli(["label", rec, "-o", tmp_path / "all.parquet"]).exit_code == 0
    for k in (1, 2, 3):
        assert cli(["convert", *heas, "--join", db, "--shard", f"{k}/3", "-o", tmp_path / "rec.parquet"]).exit_code == 0
        assert cli(["label", rec, "--shard", f"{k}/3", "-o", tmp_path / "lab.parquet"]).exit_code == 0
    whole = pq.read_table(tmp_path / "all.parquet").column("record_id").to_pylist()
    for k in (1, 2, 3):
        lab = pq.read_table(tmp_path / f"lab.shard{k}of3.parquet").column("record_id").to_pylist()
        conv = pq.read_table(tmp_path / f"rec.shard{k}of3.parquet").column("record_id").to_pylist()
        assert sorted(lab) == sorted(conv) and lab
    parts = [pq.read_table(tmp_path / f"lab.shard{k}of3.parquet").column("record_id").to_pylist() for k in (1, 2, 3)]
    assert sorted(sum(parts, [])) == sorted(whole)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    r = cli(["label", rec, "-o", tmp_path / "env.parquet"])
    assert r.exit_code == 0 and "shard 2 of 3 from the SLURM array" in r.stderr
    assert sorted(pq.read_table(tmp_path / "env.shard2of3.parquet").column("record_id").to_pylist()) == sorted(parts[1])


def test_a_shard_of_sliced_fixed_shape_batches_keeps_the_right_signals(data_dir, tmp_path, cli):
    """Shard rows taken from a slice of a batch of a preprocessed (fixed-shape) table are the rows asked for.
    pyarrow 26 applies a slice's offset twice when it takes rows of a fixed-size list of fixed-size lists, so
    ``embed --shard 1/2 -@ 2`` (whose parallel reader slices row groups into batches) ran the model on other
    records' signals, or crashed."""
    import numpy as np
    import pyarrow as pa

    from ecgtool.io import arrays as A
    from ecgtool.io.schema import batch_signal_array
    from ecgtool.io.shard import shard_batches
    from ecgtool.io.stream import open_table

    heas = sorted((data_dir / "ptbxl-500" / "records500").rglob("*.hea"))[:12]
    seg = tmp_path / "seg.parquet"
    assert cli(["convert", *map(str, heas), "-o", str(tmp_path / "raw.parquet")]).exit_code == 0
    assert cli(["preprocess", str(tmp_path / "raw.parquet"), "--preset", "ecg-fm", "--batch-size", "8",
                "-o", str(seg)]).exit_code == 0  # 24 segments in row groups of up to 8
    with open_table(seg) as r:
        whole = pa.Table.from_batches(list(r))
    ids = whole.column("record_id").to_pylist()
    signals = {}
    for i, sig in enumerate(batch_signal_array(whole.combine_chunks().to_batches()[0])):
        signals[(ids[i], whole.column("segment")[i].as_py())] = sig
    for threads in (1, 2):
        with open_table(seg, batch_size=3, threads=threads) as r:  # batches of 3: slices of the row groups
            got = list(shard_batches(iter(r), (1, 2)))
        rows = [(rid, s) for b in got for rid, s in zip(b.column("record_id").to_pylist(),
                                                        b.column("segment").to_pylist())]
        assert rows and len(rows) < len(ids)
        for b in got:
            for (rid, s), sig in zip([(x, y) for x, y in zip(b.column("record_id").to_pylist(),
                                                              b.column("segment").to_pylist())],
                                     batch_signal_array(b)):
                assert np.array_equal(sig, signals[(rid, s)]), (threads, rid, s)
    # the same through the helper, on a bare slice
    col = whole.combine_chunks().column("signal").chunk(0).slice(5, 6)
    got = batch_signal_array(pa.RecordBatch.from_arrays([A.take(col, [0, 2, 5])], names=["signal"]))
    assert np.array_equal(got, np.stack([signals[(ids[5 + k], whole.column("segment")[5 + k].as_py())]
                                         for k in (0, 2, 5)]))
