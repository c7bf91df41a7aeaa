"""The record table: formats, sniffing, streaming, metadata, atomic writes."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ecgtool.errors import InputError, UsageError
from ecgtool.io import (
    TableMeta,
    TableWriter,
    batch_signal_array,
    batch_signals,
    open_table,
    records_batch,
    sniff,
)
from ecgtool.io.schema import FORMAT_VERSION, META_KEY

EXAMPLES = Path(__file__).resolve().parents[1] / "ecgtool" / "data" / "examples" / "ptbxl"


def _example_rows():
    import wfdb

    rows = []
    for hea in sorted(EXAMPLES.glob("*.hea")):
        rec = wfdb.rdrecord(str(hea.with_suffix("")))
        rows.append({"record_id": rec.record_name, "fs": float(rec.fs), "leads": rec.sig_name,
                     "signal": rec.p_signal.T.astype(np.float32), "note": f"n{len(rows)}"})
    return rows


def _write(path, rows, fixed=False, fmt=None, meta=None):
    batch = records_batch(rows, fixed=fixed)
    meta = meta or TableMeta().add_step(["ecgtool", "test"])
    with TableWriter(path, batch.schema, meta, fmt=fmt) as w:
        w.write(batch)
    return batch


@pytest.mark.parametrize("ext", ["parquet", "arrow", "npz"])
def test_round_trip_equals_source(tmp_path, ext):
    rows = _example_rows()
    out = tmp_path / f"t.{ext}"
    _write(out, rows, fixed=(ext == "npz"))
    with open_table(out, batch_size=3) as r:
        batches = list(r)
        assert r.meta.kind == "records"
        assert r.meta.history[0]["command"] == "ecgtool test"
    assert [b.num_rows for b in batches] == [3, 1]
    sigs = [s for b in batches for s in batch_signals(b)]
    for row, sig in zip(rows, sigs):
        np.testing.assert_array_equal(sig, row["signal"])
    notes = [x for b in batches for x in b.column("note").to_pylist()]
    assert notes == [r["note"] for r in rows]


def test_fixed_shape_is_zero_copy(tmp_path):
    rows = _example_rows()
    _write(tmp_path / "f.parquet", rows, fixed=True)
    with open_table(tmp_path / "f.parquet") as r:
        (batch,) = list(r)
    arr = batch_signal_array(batch)
    assert arr.shape == (4, 12, 5000) and arr.dtype == np.float32
    np.testing.assert_array_equal(arr[2], rows[2]["signal"])


def test_raw_signals_are_dictionary_encoded_normalised_ones_plain(tmp_path):
    """Raw samples are few distinct ADC steps (dictionary pays); fixed-shape normalised ones are all distinct."""
    rows = _example_rows()
    _write(tmp_path / "raw.parquet", rows)
    _write(tmp_path / "fixed.parquet", rows, fixed=True)

    def encodings(path):
        rg = pq.ParquetFile(path).metadata.row_group(0)
        return {rg.column(i).path_in_schema: rg.column(i).encodings for i in range(rg.num_columns)}

    raw, fixed = encodings(tmp_path / "raw.parquet"), encodings(tmp_path / "fixed.parquet")
    assert "RLE_DICTIONARY" in raw["signal.list.element.list.element"]
    assert "RLE_DICTIONARY" in raw["leads.list.element"]
    assert "RLE_DICTIONARY" not in fixed["signal.list.element.list.element"]
    assert "RLE_DICTIONARY" in fixed["record_id"]


def test_format_is_sniffed_not_named(tmp_path):
    rows = _example_rows()[:1]
    p = tmp_path / "misnamed.npz"
    _write(p, rows, fmt="parquet")
    assert p.read_bytes()[:4] == b"PAR1"
    with open_table(p) as r:
        assert r.format == "parquet"
    gz = tmp_path / "x.gz"
    gz.write_bytes(gzip.compress(p.read_bytes()))
    with open_table(gz) as r:
        np.testing.assert_array_equal(batch_signals(next(iter(r)))[0], rows[0]["signal"])
    assert sniff(b"\xff\xff\xff\xff\x10") == "arrow"
    assert sniff(b"ARROW1\x00\x00") == "arrow-file"


def test_zstd_wrapped_arrow_stream(tmp_path):
    rows = _example_rows()[:2]
    p = tmp_path / "s.arrow"
    _write(p, rows)
    z = tmp_path / "s.zst"
    with pa.CompressedOutputStream(str(z), "zstd") as out:
        out.write(p.read_bytes())
    with open_table(z) as r:
        assert sum(b.num_rows for b in r) == 2


def test_truncated_and_garbage_inputs(tmp_path):
    rows = _example_rows()
    p = tmp_path / "t.parquet"
    _write(p, rows)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(InputError, match="cut.parquet"):
        with open_table(cut) as r:
            list(r)
    a = tmp_path / "t.arrow"
    _write(a, rows)
    cut_a = tmp_path / "cut.arrow"
    cut_a.write_bytes(a.read_bytes()[: a.stat().st_size - 1000])
    with pytest.raises(InputError, match="cut short|corrupt|cannot read"):
        with open_table(cut_a) as r:
            list(r)
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        open_table(tmp_path / "empty")
    (tmp_path / "text.csv").write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="not a record table"):
        open_table(tmp_path / "text.csv")
    np.save(tmp_path / "a.npy", np.zeros((2, 3)))
    with pytest.raises(InputError, match="convert"):
        open_table(tmp_path / "a.npy")


def test_newer_major_version_is_refused(tmp_path):
    rows = _example_rows()[:1]
    batch = records_batch(rows)
    meta = TableMeta()
    schema = batch.schema.with_metadata({META_KEY: json.dumps({"format_version": "99.0", "kind": "records"}).encode()})
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_batches([batch]).replace_schema_metadata(schema.metadata), tmp_path / "new.parquet")
    with pytest.raises(InputError, match="newer"):
        open_table(tmp_path / "new.parquet")
    assert meta.format_version == FORMAT_VERSION


def test_failed_write_leaves_no_file(tmp_path):
    rows = _example_rows()
    batch = records_batch(rows)
    target = tmp_path / "out.parquet"
    with pytest.raises(RuntimeError):
        with TableWriter(target, batch.schema, TableMeta()) as w:
            w.write(batch)
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_npz_needs_one_shape(tmp_path):
    rows = _example_rows()
    _write(tmp_path / "same.npz", rows)  # variable-shape column, rows of one shape: written
    with np.load(tmp_path / "same.npz") as z:
        assert z["signal"].shape == (4, 12, 5000)
        np.testing.assert_array_equal(z["signal"][1], rows[1]["signal"])
    rows[0]["signal"] = rows[0]["signal"][:, :100]
    with pytest.raises(UsageError, match=r"differ in shape \(12×100, 12×5000\)"):
        _write(tmp_path / "x.npz", rows)
    assert not (tmp_path / "x.npz").exists() and len(list(tmp_path.iterdir())) == 1


def test_parquet_on_stdin_is_spooled(tmp_path):
    rows = _example_rows()
    p = tmp_path / "t.parquet"
    _write(p, rows)
    with open(p, "rb") as fh:
        out = subprocess.run([sys.executable, "-m", "ecgtool", "info", "--json", "-"], stdin=fh,
                             capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["rows"] == 4 and info["sampling_rates"] == {"500": 4}
    assert info["lead_sets"][0]["leads"][3] == "AVR"  # stored as given; convert normalises


def test_pipe_between_processes_streams_arrow(tmp_path):
    rows = _example_rows()
    p = tmp_path / "t.parquet"
    _write(p, rows)
    cat = subprocess.Popen(["cat", str(p)], stdout=subprocess.PIPE)
    out = subprocess.run([sys.executable, "-m", "ecgtool", "info", "-"], stdin=cat.stdout,
                         capture_output=True, text=True)
    cat.wait()
    assert out.returncode == 0 and "4 rows" in out.stdout


def test_info_on_missing_file_is_one_line(cli, tmp_path):
    res = subprocess.run([sys.executable, "-m", "ecgtool", "info", str(tmp_path / "nope.parquet")],
                         capture_output=True, text=True)
    assert res.returncode == 1
    assert res.stderr.strip().count("\n") == 0 and "no such file" in res.stderr


def test_parallel_parquet_reading_matches_serial(tmp_path):
    rows = _example_rows() * 40  # 160 rows: three 64-row groups
    rows = [dict(r, record_id=f"{r['record_id']}-{i}") for i, r in enumerate(rows)]
    _write(tmp_path / "t.parquet", rows, fixed=True)
    assert pq.ParquetFile(tmp_path / "t.parquet").num_row_groups == 3
    with open_table(tmp_path / "t.parquet", batch_size=50) as r1, \
            open_table(tmp_path / "t.parquet", batch_size=50, threads=3) as r3:
        a, b = list(r1), list(r3)
    assert max(x.num_rows for x in b) <= 50
    ta, tb = pa.Table.from_batches(a), pa.Table.from_batches(b)
    assert tb.column("record_id").to_pylist() == [r["record_id"] for r in rows]
    assert ta.equals(tb)


def test_parallel_parquet_reading_from_stdin_spool(tmp_path):
    rows = [dict(r, record_id=f"r{i}") for i, r in enumerate(_example_rows() * 20)]
    _write(tmp_path / "t.parquet", rows, fixed=True)
    code = ("import sys; from ecgtool.io import open_table\n"
            "with open_table('-', threads=2) as r: print(sum(b.num_rows for b in r))")
    with open(tmp_path / "t.parquet", "rb") as fh:
        res = subprocess.run([sys.executable, "-c", code], stdin=fh, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "80"


def test_background_and_ordered_map_propagate_errors_and_stop_early():
    import threading

    from ecgtool.io.threads import background, ordered_map

    assert list(ordered_map(lambda x: x * x, range(20), threads=4)) == [x * x for x in range(20)]
    assert list(background(iter(range(10)), depth=2)) == list(range(10))

    def failing():
        yield 1
        raise ValueError("boom in the reader")

    it = background(failing())
    assert next(it) == 1
    with pytest.raises(ValueError, match="boom"):
        next(it)

    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    it = background(endless(), depth=2)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()  # the producer stops, at most ``depth`` + 1 items ahead
    n = len(produced)
    assert n <= 3 + 3
    assert not any(t.name == "ecgtool-prefetch" and t.is_alive() for t in threading.enumerate())


def test_background_writer_matches_direct_and_surfaces_errors(tmp_path):
    rows = [dict(r, record_id=f"r{i}") for i, r in enumerate(_example_rows() * 40)]
    batch = records_batch(rows, fixed=True)
    meta = TableMeta().add_step(["ecgtool", "test"])
    for bg in (False, True):
        with TableWriter(tmp_path / f"w{bg}.parquet", batch.schema, meta, background=bg) as w:
            for start in range(0, batch.num_rows, 30):
                w.write(batch.slice(start, 30))
    assert pq.read_table(tmp_path / "wTrue.parquet").equals(pq.read_table(tmp_path / "wFalse.parquet"))

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        with TableWriter(tmp_path / "bad.parquet", batch.schema, meta, background=True) as w:
            w._w._w.write_table = full_disk  # the Encoder's ParquetWriter
            for start in range(0, batch.num_rows, 64):
                w.write(batch.slice(start, 64))
    assert list(tmp_path.glob("bad*")) == [] and list(tmp_path.glob(".bad*")) == []


def test_output_follows_symlinks_writes_fifos_in_place_and_honours_umask(tmp_path):
    import os
    import threading

    rows = _example_rows()[:1]
    old = os.umask(0o022)
    try:
        _write(tmp_path / "new.parquet", rows)
        assert (tmp_path / "new.parquet").stat().st_mode & 0o777 == 0o644
        (tmp_path / "sub").mkdir()
        (tmp_path / "link.parquet").symlink_to("sub/target.parquet")
        _write(tmp_path / "link.parquet", rows)
        assert (tmp_path / "link.parquet").is_symlink()
        assert pq.read_table(tmp_path / "sub" / "target.parquet").num_rows == 1
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        got = []
        reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()))
        reader.start()
        _write(fifo, rows, fmt="arrow")
        reader.join(10)
        assert fifo.is_fifo() and got and got[0][:4] == b"\xff\xff\xff\xff"
        # an existing folder gets part files (ecgtool.io.parts), whatever its name; a file with a / is refused
        (tmp_path / "dir.parquet").mkdir()
        _write(tmp_path / "dir.parquet", rows)
        assert sorted(p.name for p in (tmp_path / "dir.parquet").iterdir()) == ["part-00000.parquet"]
        with pytest.raises(UsageError, match="is a file, not a folder"):
            _write(f"{tmp_path}/new.parquet/", rows)
    finally:
        os.umask(old)


def test_non_numeric_fs_is_named(tmp_path, cli):
    batch = records_batch(_example_rows()[:1])
    bad = batch.set_column(batch.schema.get_field_index("fs"), "fs", batch.column("fs").cast(pa.string()))
    pq.write_table(pa.Table.from_batches([bad]), tmp_path / "bad.parquet")
    for args in (["info"], ["preprocess", "--preset", "ecg-fm", "-o", str(tmp_path / "o.parquet")]):
        res = cli([*args, tmp_path / "bad.parquet"])
        assert res.exit_code == 1
        assert "column 'fs' holds string, not numbers" in res.stderr and "Traceback" not in res.stderr


def test_a_folder_or_glob_of_part_files_reads_as_one_table(data_dir, tmp_path, cli):
    from ecgtool.io import open_table

    parts = tmp_path / "parts"
    parts.mkdir()
    heas = sorted((data_dir / "ptbxl-500" / "records500" / "00000").glob("*_hr.hea"))[:3]
    for k, hea in enumerate(heas):
        assert cli(["convert", hea, "-o", parts / f"part{k}.parquet"]).exit_code == 0
    for src in (parts, str(parts / "part*.parquet"), [parts / "part0.parquet", parts / "part2.parquet"]):
        with open_table(src) as r:
            ids = [i for b in r for i in b.column("record_id").to_pylist()]
        assert ids == ([h.name[:-4] for h in heas] if not isinstance(src, list) else [heas[0].name[:-4], heas[2].name[:-4]])
    r = cli(["info", parts])
    assert r.exit_code == 0 and "3 rows" in r.stdout
    # parts of another kind are refused, naming the part
    assert cli(["preprocess", "--preset", "ecg-fm", parts / "part0.parquet", "-o", parts / "seg.parquet"]).exit_code == 0
    r = cli(["info", parts])
    assert r.exit_code == 1 and "seg.parquet" in r.stderr and "part0.parquet" in r.stderr
    assert "differ in kind: a segments table and a records table" in r.stderr
    # same kind, other columns: refused too, before any row
    assert cli(["convert", heas[0], "--join", data_dir / "ptbxl-500" / "ptbxl_database.csv",
                "-o", parts / "seg.parquet"]).exit_code == 0
    r = cli(["info", parts])
    assert r.exit_code == 1 and "seg.parquet: its columns differ from" in r.stderr


def test_provenance_is_the_command_line_passed_down(tmp_path, cli):
    """The CLI hands its command line to the tables it writes (io.schema.command_line) without touching
    sys.argv; a library call records no command."""
    import sys

    from ecgtool.io.schema import TableMeta
    from ecgtool.provenance import command_line

    before = list(sys.argv)
    out = tmp_path / "t.parquet"
    _write(out, _example_rows())
    r = cli(["info", str(out)])
    assert r.exit_code == 0 and sys.argv == before and command_line() == []
    step = TableMeta(kind="records").add_step().history[-1]
    assert step["command"] is None and step["program"] == "ecgtool"
    assert TableMeta(kind="records").add_step(["python", "-m", "x"]).history[-1]["command"] == "ecgtool -m x"


def test_help_and_completion_start_up_import_no_array_library():
    """--help (and shell completion, which runs the same start-up) loads neither torch nor numpy nor pyarrow."""
    import subprocess
    import sys

    code = ("import sys; sys.argv = ['ecgtool', '--help']\nfrom ecgtool.cli import main\ntry:\n    main()\n"
            "except SystemExit:\n    pass\nprint(sorted(m for m in ('torch', 'numpy', 'pyarrow') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_a_command_that_fails_leaves_nothing_on_stdout(tmp_path):
    """Written to a pipe, a table's header waits for its first batch: a command that fails before producing any
    row (here predict on a table with no signal column) writes no bytes for the next command to misread; an empty
    result is still a valid table."""
    import subprocess
    import sys

    import pyarrow as pa

    from ecgtool.io import write_table

    bad = tmp_path / "nosignal.parquet"
    write_table(bad, pa.table({"record_id": ["a", "b"], "fs": [250.0, 250.0], "leads": [["I"], ["I"]]}),
                TableMeta(kind="records"))
    r = subprocess.run([sys.executable, "-m", "ecgtool", "predict", str(bad), "-o", "-"], capture_output=True)
    assert r.returncode == 1 and b"no 'signal' column" in r.stderr
    assert r.stdout == b""
    code = ("import sys, pyarrow as pa\nfrom ecgtool.io import TableWriter\nfrom ecgtool.io.schema import TableMeta\n"
            "with TableWriter('-', pa.schema([('record_id', pa.string())]), TableMeta(kind='records'), fmt='arrow'):\n"
            "    pass\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert r.returncode == 0, r.stderr
    assert pa.ipc.open_stream(r.stdout).read_all().num_rows == 0
