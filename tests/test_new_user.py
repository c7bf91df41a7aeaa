"""What a new user hit (output paths, formats, truncated checkpoints, pipes, resume messages): each fixed."""

from __future__ import annotations

import subprocess
import sys

import pyarrow as pa


def _ecgtool(*args, **kw):
    return subprocess.run([sys.executable, "-m", "ecgtool", *map(str, args)], capture_output=True, **kw)


def _record(data_dir):
    return data_dir / "ptbxl-500" / "records500" / "00000" / "00001_hr.hea"


def test_output_paths_are_never_guessed(data_dir, tmp_path, reference_dir):
    # a trailing slash names a folder of part files: the folder itself is made, never its parents
    r = _ecgtool("convert", _record(data_dir), "-o", f"{tmp_path}/deep/newdir/")
    assert r.returncode == 2 and b"does not exist" in r.stderr
    assert list(tmp_path.iterdir()) == []
    r = _ecgtool("convert", _record(data_dir), "-o", f"{tmp_path}/newdir/")
    assert r.returncode == 0 and [p.name for p in (tmp_path / "newdir").iterdir()] == ["part-00000.parquet"]
    (tmp_path / "newdir" / "part-00000.parquet").unlink()
    (tmp_path / "newdir").rmdir()
    # parent folders are not created unasked
    r = _ecgtool("models", "import", reference_dir / "fixtures" / "ecgfounder" / "12_lead_reduced.pth",
                 "-o", tmp_path / "nonexistent" / "dir" / "x.safetensors")
    assert r.returncode == 2 and b"does not exist" in r.stderr and not (tmp_path / "nonexistent").exists()
    # an extension that is no table format is refused (not Parquet under a .csv name); -O keeps the name
    r = _ecgtool("convert", _record(data_dir), "-o", tmp_path / "p.csv")
    assert r.returncode == 2 and b"'.csv' is not a table format" in r.stderr and not (tmp_path / "p.csv").exists()
    assert _ecgtool("convert", _record(data_dir), "-O", "parquet", "-o", tmp_path / "p.csv").returncode == 0
    assert (tmp_path / "p.csv").read_bytes()[:4] == b"PAR1"


def test_arrow_files_are_the_ipc_file_format(data_dir, tmp_path):
    """.arrow / .feather on disk are what polars and pandas read as Arrow files; .arrows and pipes are streams."""
    import pyarrow.feather as feather
    import pyarrow.ipc as ipc

    assert _ecgtool("convert", _record(data_dir), "-o", tmp_path / "r.arrow").returncode == 0
    assert (tmp_path / "r.arrow").read_bytes()[:6] == b"ARROW1"
    assert feather.read_table(tmp_path / "r.arrow").num_rows == 1
    assert _ecgtool("convert", _record(data_dir), "-o", tmp_path / "r.arrows").returncode == 0
    assert ipc.open_stream(pa.OSFile(str(tmp_path / "r.arrows"))).read_all().num_rows == 1
    r = _ecgtool("info", tmp_path / "r.arrow")
    assert r.returncode == 0 and b"1 rows" in r.stdout


def test_truncated_checkpoint_says_truncated(reference_dir, tmp_path):
    data = (reference_dir / "fixtures" / "ecgfounder" / "12_lead_reduced.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 3])
    r = _ecgtool("models", "info", tmp_path / "cut.pth")
    assert r.returncode == 1 and b"truncated" in r.stderr and b"Traceback" not in r.stderr


def test_closed_pipe_ends_quietly_and_verbose_says_so(data_dir):
    heas = sorted((data_dir / "ptbxl-500" / "records500" / "00000").glob("*_hr.hea"))[:20]
    for verbose in (False, True):
        cmd = f"{sys.executable} -m ecgtool {'-v ' if verbose else ''}convert {' '.join(map(str, heas))} -o - | head -c 100 > /dev/null"
        r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True)
        assert r.returncode == 0, r.stderr
        assert (b"output stopped early" in r.stderr) == verbose


def test_a_run_where_every_record_fails_writes_nothing(data_dir, tmp_path):
    rec = tmp_path / "r.parquet"
    assert _ecgtool("convert", _record(data_dir), "-o", rec).returncode == 0
    r = _ecgtool("preprocess", "--fs", "500", "--segment", "20", rec, "-o", tmp_path / "q.parquet")
    assert r.returncode == 1 and b"nothing written" in r.stderr and b"shorter than one 20 s window" in r.stderr
    assert not (tmp_path / "q.parquet").exists()
    # a run where some records fail still writes the others (exit 3)
    short = tmp_path / "mix.parquet"
    heas = [_record(data_dir), data_dir / "cinc2017" / "A00001.hea"]
    assert _ecgtool("convert", *heas, "-o", short).returncode == 0
    r = _ecgtool("preprocess", "--fs", "500", "--segment", "20", "--leads", "I", short, "-o", tmp_path / "q2.parquet")
    assert r.returncode == 3 and (tmp_path / "q2.parquet").exists()


def test_verbosity_flags_after_the_command(data_dir, tmp_path):
    rec = tmp_path / "r.parquet"
    loud = _ecgtool("convert", _record(data_dir), "-o", rec)
    quiet = _ecgtool("convert", _record(data_dir), "-o", rec, "-q")
    assert quiet.returncode == 0 and b"converted 1 of 1" in loud.stderr and quiet.stderr == b""
    from ecgtool.cli.app import EcgtoolGroup

    assert EcgtoolGroup.hoist_global_flags(["info", "-v", "x"]) == ["-v", "info", "x"]
    assert EcgtoolGroup.hoist_global_flags(["info", "--", "-v"]) == ["info", "--", "-v"]


def test_threads_option_anywhere_and_clamped(data_dir, tmp_path):
    rec = tmp_path / "r.parquet"
    r = _ecgtool("convert", _record(data_dir), "-o", rec, "-@", "1000")
    assert r.returncode == 0 and b"--threads 1000: using" in r.stderr
    r = _ecgtool("-@", "1", "info", rec)
    assert r.returncode == 0 and b"--threads" not in r.stderr
    from ecgtool.io.threads import default_threads, set_threads

    try:
        assert set_threads(0) == 1 and default_threads() == 1
    finally:
        set_threads(None)


def test_joins_that_join_nothing_and_ignored_fs_are_said(data_dir, tmp_path):
    ref = data_dir / "cinc2017" / "REFERENCE.csv"
    r = _ecgtool("convert", _record(data_dir), "--join", ref, "-o", tmp_path / "j.parquet")
    assert r.returncode == 0 and b"matched none of the 1 records" in r.stderr
    r = _ecgtool("convert", _record(data_dir), "--join", ref, "--on-error", "fail", "-o", tmp_path / "j2.parquet")
    assert r.returncode == 1 and b"matched none" in r.stderr and not (tmp_path / "j2.parquet").exists()
    r = _ecgtool("convert", _record(data_dir), "--fs", "250", "-o", tmp_path / "f.parquet")
    assert r.returncode == 0 and b"keep it: resample them with 'ecgtool preprocess --fs'" in r.stderr


def test_convert_of_only_bad_records_writes_nothing(tmp_path):
    (tmp_path / "trunc.hea").write_text("x 1 500 100\nx.dat 16 200 16 0 0 0 0 I\n")
    r = _ecgtool("convert", tmp_path / "trunc.hea", "-o", tmp_path / "c.parquet")
    assert r.returncode == 1 and b"x.dat is missing" in r.stderr and b"nothing written" in r.stderr
    assert not (tmp_path / "c.parquet").exists()


def test_predict_example_takes_no_file_and_hints_name_the_command_that_has_the_option(data_dir, tmp_path):
    r = _ecgtool("predict", "--example", _record(data_dir), "-o", tmp_path / "p.parquet")
    assert r.returncode == 2 and b"takes no input" in r.stderr
    rec = tmp_path / "odd.parquet"
    assert _ecgtool("-q", "convert", data_dir / "wfdb-samples" / "310derive.hea", "-o", rec).returncode == 0
    r = _ecgtool("predict", rec, "-o", tmp_path / "p.parquet")
    assert r.returncode == 1 and b"ecgtool preprocess --rename" in r.stderr and b"choose leads it has" not in r.stderr


def test_a_temperature_at_its_search_bound_is_a_warning(caplog):
    import logging

    import numpy as np

    from ecgtool.evaluation.calibration import fit_temperature

    z = np.array([-50.0, -40.0, 40.0, 50.0])  # separable, hugely over-confident: T runs to the upper edge
    y = np.array([0, 1, 0, 1])
    logging.getLogger("ecgtool").propagate = True
    with caplog.at_level(logging.WARNING, logger="ecgtool"):
        fit_temperature(z, y)
    assert any("edge of its search range" in m for m in caplog.messages)


def test_embed_and_predict_take_several_inputs(data_dir, tmp_path):
    import pyarrow.parquet as pq

    heas = [data_dir / "ptbxl-500" / "records500" / "00000" / f"0000{i}_hr.hea" for i in (1, 2)]
    r = _ecgtool("predict", *heas, "-o", tmp_path / "p.parquet")
    assert r.returncode == 0, r.stderr
    assert pq.read_table(tmp_path / "p.parquet").num_rows == 2
    parts = []
    for k, h in enumerate(heas):
        parts.append(tmp_path / f"r{k}.parquet")
        assert _ecgtool("-q", "convert", h, "-o", parts[-1]).returncode == 0
    r = _ecgtool("embed", *parts, "-o", tmp_path / "e.parquet")
    assert r.returncode == 0 and pq.read_table(tmp_path / "e.parquet").num_rows == 2
    r = _ecgtool("embed", parts[0], heas[1], "-o", tmp_path / "x.parquet")
    assert r.returncode == 2 and b"mix tables" in r.stderr
