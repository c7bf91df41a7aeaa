"""ecgtool.io.arrays: numpy <-> Arrow on the buffers, equal to pyarrow's own conversions."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pytest

from ecgtool.io import arrays as A


@pytest.mark.parametrize("type_", [pa.float32(), pa.float64(), pa.int32(), pa.int64(), pa.uint8(), pa.int16()])
def test_to_numpy_matches_pyarrow_on_slices(type_):
    rng = np.random.default_rng(0)
    values = rng.integers(-100, 100, 50).astype(type_.to_pandas_dtype())
    arr = pa.array(values, type=type_)
    for lo, n in [(0, 50), (7, 20), (49, 1), (13, 0)]:
        part = arr.slice(lo, n)
        got = A.to_numpy(part)
        assert got.dtype == values.dtype
        np.testing.assert_array_equal(got, part.to_numpy())


def test_nulls_become_fill_or_nan():
    arr = pa.array([1.5, None, 3.0, None, 5.0]).slice(1, 4)
    np.testing.assert_array_equal(A.valid(arr), [False, True, False, True])
    np.testing.assert_array_equal(A.to_numpy(arr), [np.nan, 3.0, np.nan, 5.0])
    np.testing.assert_array_equal(A.to_numpy(arr, fill=0.0), [0.0, 3.0, 0.0, 5.0])
    ints = pa.array([1, None, 3], type=pa.int32())
    got = A.to_numpy(ints)
    assert got.dtype == np.float64 and np.isnan(got[1]) and got[2] == 3
    np.testing.assert_array_equal(A.to_numpy(ints, fill=-1), [1, -1, 3])


def test_booleans_and_chunked():
    bools = pa.array([True, False, True, True, False, False, True, False, True, True]).slice(3, 6)
    np.testing.assert_array_equal(A.to_numpy(bools), bools.to_pylist())
    chunked = pa.chunked_array([pa.array([1.0, 2.0]), pa.array([3.0])])
    np.testing.assert_array_equal(A.to_numpy(chunked), [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="fill"):
        A.to_numpy(pa.array([True, None]))


def test_offsets_of_sliced_and_fixed_lists():
    lists = pa.array([[1.0], [2.0, 3.0], [], [4.0, 5.0, 6.0]]).slice(1, 3)
    off = A.offsets(lists)
    assert off.dtype == np.int64
    values = A.to_numpy(lists.values)
    assert [values[off[i]:off[i + 1]].tolist() for i in range(3)] == lists.to_pylist()
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(12.0)), 3).slice(2, 2)
    off = A.offsets(fixed)
    values = A.to_numpy(fixed.values)
    assert [values[off[i]:off[i + 1]].tolist() for i in range(2)] == fixed.to_pylist()


def test_builders_equal_pa_array():
    vals = np.array([0.5, -1.25, 3.0], dtype=np.float32)
    assert A.from_numpy(vals).equals(pa.array(vals))
    assert A.from_numpy(vals, pa.float64()).equals(pa.array(vals.astype(np.float64)))
    assert A.from_numpy(np.array([True, False, True])).equals(pa.array([True, False, True]))
    assert A.from_numpy(np.array([1, 2, 3]), pa.int32(), ok=np.array([True, False, True])).equals(
        pa.array([1, None, 3], type=pa.int32()))
    words = ["I", None, "aVR", "", "ÄÖ"]
    assert A.strings(words).equals(pa.array(words, type=pa.string()))
    lists = [["I", "II"], None, [], ["V1"]]
    assert A.string_lists(lists).equals(pa.array(lists, type=pa.list_(pa.string())))
    assert A.indices([2, None, 0]).equals(pa.array([2, None, 0], type=pa.int64()))
    when = [dt.datetime(2001, 2, 3, 4, 5, 6, 7), None]
    assert A.column(when, pa.timestamp("us")).equals(pa.array(when, type=pa.timestamp("us")))
    assert A.column([1.5, None], pa.float64()).equals(pa.array([1.5, None]))
    assert A.column([True, None], pa.bool_()).equals(pa.array([True, None]))


def test_take_with_built_indices():
    table = pa.table({"x": ["a", "b", "c"]})
    assert table.take(A.indices(np.array([2, 0]))).column("x").to_pylist() == ["c", "a"]


@pytest.mark.parametrize("args", [
    ["convert", "{example}", "-o", "{tmp}/r.parquet"],
    ["preprocess", "--preset", "ecg-fm", "{table}", "-o", "{tmp}/s.parquet"],
    ["info", "{table}"],
    ["predict", "{table}", "-o", "{tmp}/p.parquet"],
])
def test_record_table_commands_do_not_import_pandas(tmp_path, args):
    """pyarrow would import pandas (about 0.3 s) on to_numpy() or pa.array(); these commands avoid both."""
    from importlib.resources import files

    example = str(files("ecgtool") / "data" / "examples")
    table = tmp_path / "t.parquet"
    from ecgtool.cli import app
    from typer.testing import CliRunner

    assert CliRunner().invoke(app, ["-q", "convert", example, "-o", str(table)]).exit_code == 0
    argv = ["ecgtool", "-q"] + [a.format(example=example, tmp=tmp_path, table=table) for a in args]
    code = textwrap.dedent(f"""
        import sys
        sys.argv = {argv!r}
        from ecgtool.cli import main
        try:
            main()
        except SystemExit as e:
            assert not e.code, e.code
        assert "pandas" not in sys.modules, "pandas was imported"
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_json_text_is_strict():
    import json

    import numpy as np

    from ecgtool.io.files import json_text

    text = json_text({"a": float("nan"), "b": [np.float32(1.5), np.int64(3), float("inf")], "c": None, 1: "x"})
    assert json.loads(text) == {"a": None, "b": [1.5, 3, None], "c": None, "1": "x"}
