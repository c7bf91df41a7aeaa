"""Folder output (-o DIR/): part files encoded in parallel, all or nothing, shards sharing a folder, and a
folder read as one table strictly (mixed kinds, truncated parts named up front)."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ecgtool.errors import InputError
from ecgtool.io import TableMeta, TableWriter, open_table, records_batch
from ecgtool.io.parts import PART_BYTES_ENV, PartsWriter, rows_per_part
from ecgtool.io.shard import shard_path

# a part of about 0.6 MB: two or three PTB-XL 500 Hz records (240 kB each in memory)
SMALL = "600000"


@pytest.fixture
def records(data_dir):
    """12 PTB-XL records (12 leads, 500 Hz, 10 s) and 4 CinC 2017 ones (one lead, 300 Hz, 9-60 s)."""
    ptb = sorted((data_dir / "ptbxl-500" / "records500" / "00000").glob("*_hr.hea"))[:12]
    cinc = [data_dir / "cinc2017" / f"A0000{i}.hea" for i in range(1, 5)]
    return ptb + cinc


def _read(src) -> pa.Table:
    with open_table(src) as r:
        return r.read_all()


def _same(a: pa.Table, b: pa.Table) -> bool:
    """Same rows in the same order (the metadata's history differs: the command lines)."""
    return a.num_rows == b.num_rows and a.replace_schema_metadata(None).equals(b.replace_schema_metadata(None))


def _names(folder) -> list[str]:
    return sorted(q.name for q in folder.iterdir())


def test_convert_and_preprocess_to_a_folder_equal_one_file(records, tmp_path, cli, monkeypatch):
    assert cli(["-@", "1", "convert", *records, "-o", tmp_path / "rec.parquet"]).exit_code == 0
    r = cli(["preprocess", "--preset", "ecg-fm", tmp_path / "rec.parquet", "-o", tmp_path / "seg.parquet"])
    assert r.exit_code == 0
    rec, seg = _read(tmp_path / "rec.parquet"), _read(tmp_path / "seg.parquet")
    monkeypatch.setenv(PART_BYTES_ENV, SMALL)
    for threads in ("1", "2"):
        out = tmp_path / f"rec{threads}"
        r = cli(["-@", threads, "convert", *records, "-o", f"{out}/"])
        assert r.exit_code == 0, r.stderr
        names = _names(out)
        assert len(names) > 2 and names[0] == "part-00000.parquet" and all(n.startswith("part-") for n in names)
        assert _same(_read(out), rec)
        # the folder read as input (by name, without the slash) gives the same segments as the file
        dest = tmp_path / f"seg{threads}"
        r = cli(["-@", threads, "preprocess", "--preset", "ecg-fm", out, "-o", f"{dest}/"])
        assert r.exit_code == 0, r.stderr
        assert len(_names(dest)) > 1 and _same(_read(dest), seg)
    # Arrow parts (.arrow, the IPC file format) read back the same too
    r = cli(["-@", "2", "convert", *records, "-O", "arrow", "-o", f"{tmp_path}/arrow/"])
    assert r.exit_code == 0, r.stderr
    assert all(n.endswith(".arrow") for n in _names(tmp_path / "arrow")) and _same(_read(tmp_path / "arrow"), rec)
    # info describes the whole folder
    r = cli(["info", "--json", tmp_path / "rec2"])
    assert r.exit_code == 0 and '"rows": 16' in r.stdout and f'"parts": {len(_names(tmp_path / "rec2"))}' in r.stdout
    assert "16 rows in" in cli(["info", tmp_path / "rec2"]).stdout


def test_part_size_from_the_first_batch():
    batch = pa.record_batch({"x": pa.array(range(1000), pa.int64())})  # 8 bytes a row
    assert rows_per_part(batch) == (64 << 20) // 8
    # known total: 8 parts for the threads, but never below the 8 MiB floor
    assert rows_per_part(batch, expected_rows=40_000_000, row_group=1) == 5_000_000
    assert rows_per_part(batch, expected_rows=1000, row_group=1) == (8 << 20) // 8


def test_no_statistics_for_the_signal(records, tmp_path, cli):
    assert cli(["convert", *records[:2], "-o", tmp_path / "r.parquet"]).exit_code == 0
    rg = pq.ParquetFile(tmp_path / "r.parquet").metadata.row_group(0)
    cols = {rg.column(i).path_in_schema: rg.column(i) for i in range(rg.num_columns)}
    assert not cols["signal.list.element.list.element"].is_stats_set
    assert cols["record_id"].is_stats_set and cols["fs"].is_stats_set


def test_a_failed_command_leaves_no_part(records, tmp_path, cli, monkeypatch):
    monkeypatch.setenv(PART_BYTES_ENV, SMALL)
    bad = tmp_path / "src" / "zz_hr.hea"  # a header whose signal file is missing: the last record fails
    bad.parent.mkdir()
    shutil.copy(records[0], bad)
    for threads in ("1", "2"):
        r = cli(["-@", threads, "convert", *records, bad, "--batch-size", "2", "--on-error", "fail",
                 "-o", f"{tmp_path}/new/"])
        assert r.exit_code == 1 and "zz_hr" in r.stderr
        assert not (tmp_path / "new").exists()  # the folder it made is gone too
        (tmp_path / "mine").mkdir(exist_ok=True)  # a folder that was there stays, empty (no hidden files)
        r = cli(["-@", threads, "convert", *records, bad, "--batch-size", "2", "--on-error", "fail",
                 "-o", tmp_path / "mine"])
        assert r.exit_code == 1 and _names(tmp_path / "mine") == []


def test_an_encoding_thread_failing_leaves_no_part(tmp_path, monkeypatch):
    import ecgtool.io.parts as parts

    batch = records_batch([{"record_id": f"r{i}", "fs": 500.0, "leads": ["I"],
                            "signal": np.full((1, 10), i, dtype=np.float32)} for i in range(40)])
    monkeypatch.setenv(PART_BYTES_ENV, "200")
    calls = []
    real = parts.Encoder.write

    def failing(self, b):
        calls.append(1)
        if len(calls) == 5:
            raise OSError("disk full")
        real(self, b)

    monkeypatch.setattr(parts.Encoder, "write", failing)
    with pytest.raises(OSError, match="disk full"):
        with TableWriter(f"{tmp_path}/out/", batch.schema, TableMeta(), threads=2, row_group_size=1) as w:
            assert isinstance(w, PartsWriter)
            for i in range(40):
                w.write(batch.slice(i, 1))
    assert not (tmp_path / "out").exists()
    # an interruption in the caller (Ctrl-C, SIGTERM) is the same
    monkeypatch.setattr(parts.Encoder, "write", real)
    with pytest.raises(KeyboardInterrupt):
        with TableWriter(f"{tmp_path}/out/", batch.schema, TableMeta(), threads=2) as w:
            w.write(batch)
            raise KeyboardInterrupt
    assert not (tmp_path / "out").exists()


def test_a_folder_with_tables_is_refused(records, tmp_path, cli):
    out = tmp_path / "out"
    assert cli(["convert", *records[:2], "-o", f"{out}/"]).exit_code == 0
    assert _names(out) == ["part-00000.parquet"]
    r = cli(["convert", *records[:2], "-o", f"{out}/"])
    assert r.exit_code == 2 and str(out) in r.stderr and "already holds table files" in r.stderr
    assert "remove them" in r.stderr and _names(out) == ["part-00000.parquet"]
    # any table file counts; other files do not
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    assert cli(["convert", *records[:2], "-o", other]).exit_code == 0
    assert _names(other) == ["notes.txt", "part-00000.parquet"]
    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.copy(out / "part-00000.parquet", mine / "mine.parquet")
    r = cli(["convert", *records[:2], "-o", f"{mine}/"])
    assert r.exit_code == 2 and "mine.parquet" in r.stderr
    # NPZ holds whole arrays: no part files
    r = cli(["convert", *records[:2], "-O", "npz", "-o", f"{tmp_path}/npz/"])
    assert r.exit_code == 2 and "NPZ cannot be written as part files" in r.stderr
    assert not (tmp_path / "npz").exists()
    # a folder inside a missing one is not made
    r = cli(["convert", *records[:2], "-o", f"{tmp_path}/no/such/"])
    assert r.exit_code == 2 and "does not exist" in r.stderr and not (tmp_path / "no").exists()


def test_shards_write_into_one_folder(records, tmp_path, cli, monkeypatch):
    monkeypatch.setenv(PART_BYTES_ENV, SMALL)
    assert shard_path(f"{tmp_path}/out/", (1, 4)) == f"{tmp_path}/out/part-shard1of4-{{part}}"
    assert shard_path("out/x-{part}.parquet", (2, 4)) == "out/x-{part}.shard2of4.parquet"
    assert cli(["convert", *records, "-o", tmp_path / "all.parquet"]).exit_code == 0
    for k in (1, 2, 3):
        r = cli(["-@", "2", "convert", *records, "--shard", f"{k}/3", "-o", f"{tmp_path}/out/"])
        assert r.exit_code == 0, r.stderr
    names = _names(tmp_path / "out")
    assert {n.split("-")[1] for n in names} == {"shard1of3", "shard2of3", "shard3of3"}
    by_id = lambda t: t.take(pa.compute.sort_indices(t, [("record_id", "ascending")]))  # noqa: E731
    assert _same(by_id(_read(tmp_path / "out")), by_id(_read(tmp_path / "all.parquet")))
    # a shard written twice, or another run into the shards' folder, is refused
    for extra in (["--shard", "2/3"], ["--no-shard"], ["--shard", "1/2"]):
        r = cli(["convert", *records, *extra, "-o", f"{tmp_path}/out/"])
        assert r.exit_code == 2 and "already holds table files" in r.stderr
    assert _names(tmp_path / "out") == names


def test_part_name_template(records, tmp_path, cli, monkeypatch):
    monkeypatch.setenv(PART_BYTES_ENV, SMALL)
    (tmp_path / "out").mkdir()
    r = cli(["convert", *records, "-o", f"{tmp_path}/out/x-{{part}}.parquet"])
    assert r.exit_code == 0, r.stderr
    names = _names(tmp_path / "out")
    assert len(names) > 1 and names[0] == "x-00000.parquet"
    r = cli(["convert", *records[:3], "--shard", "1/2", "-o", f"{tmp_path}/out/x-{{part}}.parquet"])
    assert r.exit_code == 0 and (tmp_path / "out" / "x-00000.shard1of2.parquet").exists()
    r = cli(["convert", *records[:3], "-o", f"{tmp_path}/out/x-{{part}}.parquet"])
    assert r.exit_code == 2 and "x-00000.parquet" in r.stderr


def test_a_folder_mixing_kinds_is_refused_naming_both(records, tmp_path, cli):
    out = tmp_path / "out"
    assert cli(["convert", *records[:3], "-o", f"{out}/"]).exit_code == 0
    assert cli(["preprocess", "--preset", "ecg-fm", out, "-o", tmp_path / "seg.parquet"]).exit_code == 0
    shutil.copy(tmp_path / "seg.parquet", out / "part-00001.parquet")
    with pytest.raises(InputError) as err:
        open_table(out)  # refused before any row is produced
    msg = str(err.value)
    assert "part-00001.parquet" in msg and "part-00000.parquet" in msg and "kind" in msg and "segments" in msg
    r = cli(["info", out])
    assert r.exit_code == 1 and "differ in kind" in r.stderr


def test_a_truncated_part_is_named_before_any_row(records, tmp_path, cli, monkeypatch):
    monkeypatch.setenv(PART_BYTES_ENV, SMALL)
    out = tmp_path / "out"
    assert cli(["-@", "2", "convert", *records, "-o", f"{out}/"]).exit_code == 0
    last = out / _names(out)[-1]
    last.write_bytes(last.read_bytes()[:-100])
    with pytest.raises(InputError) as err:
        open_table(out)
    assert last.name in str(err.value) and "truncated" in str(err.value)
    r = cli(["-@", "2", "preprocess", "--preset", "ecg-fm", out, "-o", tmp_path / "seg.parquet"])
    assert r.exit_code == 1 and last.name in r.stderr and not (tmp_path / "seg.parquet").exists()


def test_embed_and_predict_over_a_folder_equal_a_file(records, tmp_path, cli, monkeypatch):
    """Sharded model runs with reading threads (row groups of 2 rows, decoded in parallel; the shard keeps some
    rows of a batch) over part files give what they give over one file, every time (a tiny random-weight
    classifier keeps it quick)."""
    import ecgtool
    from ecgtool.models.checkpoint import save_checkpoint

    model = tmp_path / "tiny.safetensors"
    net = ecgtool.create_model("ecgfm-tiny")
    net.reset_classifier(["a", "b"])
    save_checkpoint(net, model)
    rec = tmp_path / "rec.parquet"
    assert cli(["convert", *records[:6], "--batch-size", "2", "-o", rec]).exit_code == 0
    assert pq.ParquetFile(rec).num_row_groups == 3
    monkeypatch.setenv(PART_BYTES_ENV, "1000000")  # 4 rows a part, in 2 row groups
    assert cli(["convert", *records[:6], "--batch-size", "2", "-o", f"{tmp_path}/parts/"]).exit_code == 0
    assert len(_names(tmp_path / "parts")) == 2
    for command in ("embed", "predict"):
        outs = []
        for rep in range(3):
            for src in (rec, tmp_path / "parts"):
                dest = tmp_path / f"{command}{rep}{src.stem}.parquet"
                r = cli(["-@", "2", command, "-m", model, src, "--shard", "1/2", "--precision", "fp32",
                         "--batch-size", "2", "-o", dest])
                assert r.exit_code == 0, r.stderr
                assert "NaN or infinite" not in r.stderr
                outs.append(_read(shard_path(str(dest), (1, 2))))
        assert outs[0].num_rows > 0 and all(_same(o, outs[0]) for o in outs[1:])
