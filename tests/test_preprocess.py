"""preprocess: each step against an independent computation, on real records."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from ecgtool.errors import RecordErrors, UsageError
from ecgtool.io import TableMeta, batch_signal_array, open_table, records_batch, write_table
from ecgtool.preprocess import Preprocessor, make_config

STANDARD_12 = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]


# --------------------------------------------------------------------------- helpers


def _read(path: Path) -> dict:
    """One WFDB record as a row of a record table (what convert produces)."""
    import wfdb

    r = wfdb.rdrecord(str(path))
    return {
        "record_id": path.name,
        "fs": float(r.fs),
        "leads": list(r.sig_name),
        "signal": np.ascontiguousarray(r.p_signal.T, dtype=np.float32),
    }


def _ptbxl(data_dir, ids):
    return [_read(data_dir / "ptbxl-500" / "records500" / "00000" / f"{i:05d}_hr") for i in ids]


def _run(rows, preset=None, errors=None, **settings) -> tuple[pa.RecordBatch | None, Preprocessor]:
    pre = Preprocessor(make_config(preset, **settings), errors or RecordErrors("fail"))
    return pre.process(records_batch(rows)), pre


# --------------------------------------------------------------------------- presets vs fixtures


def test_ecgfm_preset_reproduces_fairseq_signals_segments(data_dir, reference_dir):
    fx = np.load(reference_dir / "fixtures" / "ecgfm" / "io.npz")["x"]  # ecg_id 1 seg 0, 9 seg 1, 17 seg 0
    out, pre = _run(_ptbxl(data_dir, (1, 9, 17)), "ecg-fm")
    x = batch_signal_array(out)
    assert x.shape == (6, 12, 2500) and x.dtype == np.float32
    assert out.column(out.schema.get_field_index("record_id")).to_pylist() == [
        "00001_hr", "00001_hr", "00009_hr", "00009_hr", "00017_hr", "00017_hr"]
    assert out.column(out.schema.get_field_index("segment")).to_pylist() == [0, 1, 0, 1, 0, 1]
    np.testing.assert_allclose(x[[0, 3, 4]], fx, atol=1e-5)
    assert out.column(out.schema.get_field_index("leads")).to_pylist()[0] == STANDARD_12
    assert pre.output_kind() == "segments"


def test_ecgfounder_no_filter_record_zscore_reproduces_fixture(data_dir, reference_dir):
    fx = np.load(reference_dir / "fixtures" / "ecgfounder" / "io.npz")["x"]
    out, _ = _run(_ptbxl(data_dir, (1, 9, 17)), "ecgfounder", filter="none")
    x = batch_signal_array(out)
    assert x.shape == (3, 12, 5000)
    np.testing.assert_allclose(x, fx, atol=1e-5)
    # the per-lead z-score is a different normalisation: it must not match
    out2, _ = _run(_ptbxl(data_dir, (1,)), "ecgfounder", filter="none", normalisation="per-lead-zscore")
    assert np.abs(batch_signal_array(out2)[0] - fx[0]).max() > 0.1


def test_ecgfounder_filters_match_scipy(data_dir):
    from scipy import signal as sig

    rows = _ptbxl(data_dir, (2,))
    out, _ = _run(rows, "ecgfounder", notch="60")
    # ECGFounder's filter_bandpass as published: (b, a) filtfilt, then medfilt, then a global z-score
    x = rows[0]["signal"].astype(np.float64)
    b, a = sig.iirnotch(60.0, 30.0, fs=500)
    y = sig.filtfilt(b, a, x, axis=-1)
    b, a = sig.butter(4, [0.67, 40], btype="bandpass", fs=500)
    y = sig.filtfilt(b, a, y, axis=-1)
    y = y - np.stack([sig.medfilt(lead, 201) for lead in y])
    y = (y - y.mean()) / (y.std() + 1e-8)
    np.testing.assert_allclose(batch_signal_array(out)[0], y, atol=2e-5)
    # the 50 Hz notch is a different filter
    out50, _ = _run(rows, "ecgfounder")
    assert np.abs(batch_signal_array(out50)[0] - y).max() > 1e-3


# --------------------------------------------------------------------------- single steps


def _cinc2017(data_dir, names):
    return [_read(data_dir / "cinc2017" / n) for n in names]


def test_resample_poly_equals_scipy_and_linear_equals_interp1d(data_dir):
    from scipy.interpolate import interp1d
    from scipy.signal import resample_poly

    rows = _cinc2017(data_dir, ("A00001", "A00003"))
    assert rows[0]["fs"] == 300.0 and rows[0]["signal"].shape[1] != rows[1]["signal"].shape[1]
    out, _ = _run(rows, fs=500, resample_method="poly", length_s=9.0, leads="ECG")
    x = batch_signal_array(out)
    for k, r in enumerate(rows):
        ref = resample_poly(r["signal"].astype(np.float64), 5, 3, axis=-1)[:, :4500]
        np.testing.assert_allclose(x[k], ref, atol=1e-5)
    out, _ = _run(rows, fs=500, resample_method="linear", length_s=9.0, leads="ECG")
    x = batch_signal_array(out)
    for k, r in enumerate(rows):
        n = r["signal"].shape[1]
        m = int(n * 500 / 300)
        ref = interp1d(np.linspace(0, m - 1, n), r["signal"].astype(np.float64), kind="linear")(np.arange(m))
        np.testing.assert_allclose(x[k], ref[:, :4500], atol=1e-5)


def test_no_resample_when_rate_matches(data_dir):
    rows = _ptbxl(data_dir, (3,))
    out, _ = _run(rows, fs=500, resample_method="poly")
    np.testing.assert_array_equal(batch_signal_array(out)[0], rows[0]["signal"])


def test_derivation_of_limb_leads(data_dir):
    full = _ptbxl(data_dir, (5,))[0]
    keep = [0, 1] + list(range(6, 12))  # I, II, V1-V6
    part = dict(full, leads=[full["leads"][i] for i in keep], signal=full["signal"][keep])
    out, _ = _run([part], leads="12")
    x = batch_signal_array(out)[0]
    I, II = part["signal"][0].astype(np.float64), part["signal"][1]
    np.testing.assert_allclose(x[2], II - I, atol=1e-6)
    np.testing.assert_allclose(x[3], -(I + II) / 2, atol=1e-6)
    np.testing.assert_allclose(x[4], I - II / 2, atol=1e-6)
    np.testing.assert_allclose(x[5], II - I / 2, atol=1e-6)
    # and the recorded limb leads agree to the recording's resolution
    np.testing.assert_allclose(x[2:6], full["signal"][2:6], atol=2e-3)
    np.testing.assert_array_equal(x[6:], full["signal"][6:])
    mask = out.column(out.schema.get_field_index("lead_mask")).to_pylist()[0]
    assert mask == [True] * 12


def test_missing_leads_zero_fill_mask_or_drop(data_dir):
    full = _ptbxl(data_dir, (6,))[0]
    keep = [0, 1, 6, 7]  # I, II, V1, V2
    part = dict(full, leads=[full["leads"][i] for i in keep], signal=full["signal"][keep])
    out, _ = _run([part, full], leads="12", derive=False, normalisation="per-lead-zscore")
    x = batch_signal_array(out)
    masks = out.column(out.schema.get_field_index("lead_mask")).to_pylist()
    assert masks[0] == [True, True, False, False, False, False, True, True, False, False, False, False]
    assert masks[1] == [True] * 12
    assert np.all(x[0][~np.array(masks[0])] == 0)
    assert out.schema.field("lead_mask").type == pa.list_(pa.bool_(), 12)
    out, pre = _run([part, full], leads="12", derive=False, missing="drop")
    assert out.num_rows == 1 and out.column(0).to_pylist() == [full["record_id"]]
    assert pre.dropped == {"missing leads": 1}


def test_normalisations():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4, 1000)) * [[[1], [2], [3], [4]]] + 5
    x[1, 2] = 0.7  # a constant lead
    from ecgtool.signal.normalise import per_lead_zscore, record_zscore

    z = per_lead_zscore(x)
    assert np.all(z[1, 2] == 0)
    ok = np.ones((3, 4), bool)
    ok[1, 2] = False
    np.testing.assert_allclose(z.mean(-1)[ok], 0, atol=1e-12)
    np.testing.assert_allclose(z.std(-1)[ok], 1, atol=1e-12)
    r = record_zscore(x)
    for k in range(3):
        np.testing.assert_allclose(r[k], (x[k] - x[k].mean()) / x[k].std(), atol=1e-12)
    m = record_zscore(x, np.array([True, True, False, True]))
    sel = x[0][[0, 1, 3]]
    np.testing.assert_allclose(m[0][[0, 1, 3]], (sel - sel.mean()) / sel.std(), atol=1e-12)
    assert np.all(m[:, 2] == 0)


def test_segments_short_records_and_remainder(data_dir):
    names = ("A00001", "A00003", "A00005")  # 30 s, 60 s, 61 s at 300 Hz
    rows = _cinc2017(data_dir, names)
    lengths = [r["signal"].shape[1] / 300 for r in rows]
    errors = RecordErrors("skip")
    out, _ = _run(rows, errors=errors, leads="ECG", segment_s=31.0)
    expect = [int(s // 31) for s in lengths]
    recs = out.column(out.schema.get_field_index("record_id")).to_pylist()
    segs = out.column(out.schema.get_field_index("segment")).to_pylist()
    assert [recs.count(r["record_id"]) for r in rows] == expect
    assert errors.count == sum(1 for e in expect if e == 0) >= 1
    for r in rows:
        got = [s for rid, s in zip(recs, segs) if rid == r["record_id"]]
        assert got == list(range(len(got)))
    assert batch_signal_array(out).shape[1:] == (1, 9300)
    # pad policy: a short record becomes one zero-padded window
    out, _ = _run(rows[:1], leads="ECG", segment_s=31.0, short="pad")
    x = batch_signal_array(out)[0, 0]
    n = rows[0]["signal"].shape[1]
    np.testing.assert_array_equal(x[:n], rows[0]["signal"][0])
    assert np.all(x[n:] == 0)


def test_quality_flags_on_flat_ningbo_leads(data_dir):
    names = sorted(p.stem for p in (data_dir / "cinc2021-sample").glob("JS*.hea"))[:10]
    rows = [_read(data_dir / "cinc2021-sample" / n) for n in names]
    out, _ = _run(rows, "ecg-fm")
    per_rec = dict(zip(out.column(0).to_pylist(), out.column(out.schema.get_field_index("q_flat_leads")).to_pylist()))
    for r in rows:
        expect = int((np.ptp(r["signal"], axis=1) < 0.01).sum())
        assert per_rec[r["record_id"]] == expect
    assert per_rec["JS20004"] == 3 and per_rec["JS20008"] == 3
    out, pre = _run(rows, "ecg-fm", drop_flagged=["flat"])
    kept = set(out.column(0).to_pylist())
    assert "JS20004" not in kept and "JS20008" not in kept and "JS20000" in kept
    assert pre.dropped == {"flagged flat": 2}


def test_clipping_and_amplitude_flags():
    from ecgtool.signal.quality import quality_flags

    t = np.arange(5000) / 500
    ecg = np.sin(2 * np.pi * 1.2 * t) ** 15  # sharp peaks once a beat
    clipped = np.minimum(ecg * 3, 1.5)  # the peaks hit a rail
    big = ecg * 30
    q = quality_flags(np.stack([ecg, clipped, big])[:, None, :])
    assert q["q_clipping"].tolist() == [0, 1, 0]
    assert q["q_amplitude"].tolist() == [0, 0, 1]


def test_nan_policy(data_dir):
    rows = _ptbxl(data_dir, (7, 8))
    rows[0]["signal"] = rows[0]["signal"].copy()
    rows[0]["signal"][3, 100:200] = np.nan
    out, _ = _run(rows, "ecg-fm")
    qn = out.column(out.schema.get_field_index("q_nan")).to_pylist()
    assert qn == [100, 100, 0, 0]
    assert np.isfinite(batch_signal_array(out)).all()
    out, pre = _run(rows, "ecg-fm", nan="drop")
    assert set(out.column(0).to_pylist()) == {"00008_hr"} and pre.dropped == {"NaN samples": 1}
    rows[0]["signal"][:] = np.nan
    errors = RecordErrors("skip")
    out, _ = _run(rows, "ecg-fm", errors=errors)
    assert errors.count == 1 and set(out.column(0).to_pylist()) == {"00008_hr"}


def test_options_override_preset_and_bad_options():
    cfg = make_config("ecg-fm", segment_s=2.0, resample_method="poly")
    assert cfg.segment_s == 2.0 and cfg.resample_method == "poly" and cfg.normalisation == "per-lead-zscore"
    cfg = make_config("ecgfounder", notch=60.0)
    assert cfg.notch == 60.0 and cfg.bandpass == (0.67, 40.0)
    cfg = make_config("ecgfounder", filter="none", notch=60.0)
    assert cfg.bandpass is None and cfg.baseline == "none" and cfg.notch == 60.0
    assert make_config("ecgfounder", bandpass=False).bandpass is None
    # an explicit window replaces the preset's; both given explicitly exclude each other
    cfg = make_config("ecg-fm", length_s=10.0)
    assert cfg.length_s == 10.0 and cfg.segment_s is None
    with pytest.raises(UsageError):
        make_config("ecg-fm", length_s=10.0, segment_s=5.0)
    with pytest.raises(UsageError):
        make_config(normalisation="minmax")
    with pytest.raises(UsageError):
        make_config("nope")


# --------------------------------------------------------------------------- tables and the CLI


def test_cli_streams_table_with_passthrough_and_metadata(data_dir, tmp_path, cli):
    rows = _ptbxl(data_dir, (1, 2, 3))
    for k, r in enumerate(rows):
        r["strat_fold"] = k + 1
        r["scp_codes"] = f"code{k}"
    src = tmp_path / "rec.parquet"
    batch = records_batch(rows)
    write_table(src, pa.Table.from_batches([batch]), TableMeta())
    dest = tmp_path / "seg.parquet"
    res = cli(["preprocess", "--preset", "ecg-fm", "--batch-size", "2", str(src), "-o", str(dest)])
    assert res.exit_code == 0, res.output
    with open_table(dest) as r:
        meta = r.meta
        table = r.read_all()
    assert meta.kind == "segments"
    assert meta.info["normalisation"] == "per-lead-zscore"
    assert meta.info["preprocess"]["preset"] == "ecg-fm" and meta.info["preprocess"]["segment_s"] == 5.0
    assert "preprocess" in meta.history[-1]["command"]
    assert table.column("strat_fold").to_pylist() == [1, 1, 2, 2, 3, 3]
    assert table.column("scp_codes").to_pylist() == ["code0", "code0", "code1", "code1", "code2", "code2"]
    assert table.schema.field("signal").type == pa.list_(pa.list_(pa.float32(), 2500), 12)
    x = table.column("signal").combine_chunks().flatten().flatten().to_numpy().reshape(6, 12, 2500)
    ref, _ = _run(_ptbxl(data_dir, (1, 2, 3)), "ecg-fm")
    np.testing.assert_array_equal(x, batch_signal_array(ref))


def test_cli_variable_rates_need_fs(data_dir, tmp_path, cli):
    rows = _ptbxl(data_dir, (1,)) + [_read(data_dir / "ptbxl-500" / "records100" / "00000" / "00002_lr")]
    src = tmp_path / "mixed.parquet"
    write_table(src, pa.Table.from_batches([records_batch(rows)]), TableMeta())
    res = cli(["preprocess", str(src), "-o", str(tmp_path / "a.parquet")])
    assert res.exit_code == 3
    assert "00002_lr" in res.output and "--fs" in res.output
    res = cli(["preprocess", "--fs", "500", "--resample-method", "poly", str(src), "-o", str(tmp_path / "b.parquet")])
    assert res.exit_code == 0, res.output
    with open_table(tmp_path / "b.parquet") as r:
        t = r.read_all()
    assert t.num_rows == 2 and t.schema.field("signal").type == pa.list_(pa.list_(pa.float32(), 5000), 12)


def test_real_pipe_from_convert(data_dir, tmp_path):
    from ecgtool.cli import COMMANDS

    if "convert" not in COMMANDS:
        pytest.skip("ecgtool convert is not in this build")
    src = data_dir / "ptbxl-500" / "records500" / "00000"
    files = [str(src / f"{i:05d}_hr.hea") for i in (1, 9, 17)]
    dest = tmp_path / "seg.parquet"
    conv = subprocess.Popen([sys.executable, "-m", "ecgtool", "-q", "convert", *files, "-o", "-"],
                            stdout=subprocess.PIPE)
    pre = subprocess.run([sys.executable, "-m", "ecgtool", "-q", "preprocess", "--preset", "ecg-fm", "-", "-o",
                          str(dest)], stdin=conv.stdout, capture_output=True)
    conv.stdout.close()
    assert conv.wait() == 0 and pre.returncode == 0, pre.stderr.decode()
    with open_table(dest) as r:
        t = r.read_all()
    x = t.column("signal").combine_chunks().flatten().flatten().to_numpy().reshape(-1, 12, 2500)
    fx = np.load(data_dir.parent / "reference" / "fixtures" / "ecgfm" / "io.npz")["x"]
    np.testing.assert_allclose(x[[0, 3, 4]], fx, atol=1e-5)


def test_rename_single_lead_into_preset(data_dir):
    from scipy.interpolate import interp1d

    rows = _cinc2017(data_dir, ("A00001",))
    errors = RecordErrors("skip")
    out, _ = _run(rows, "ecg-fm", rename=["ECG=II"], leads=["I"], errors=errors)
    assert out is None and errors.count == 1  # renamed to II: none of the asked-for leads
    # a single lead under a generic name ('ECG', AliveCor) is taken as lead I by default ...
    default, _ = _run(rows, "ecg-fm")
    out, _ = _run(rows, "ecg-fm", rename=["ECG=I"])
    np.testing.assert_array_equal(batch_signal_array(default), batch_signal_array(out))
    x = batch_signal_array(out)
    mask = out.column(out.schema.get_field_index("lead_mask")).to_pylist()[0]
    assert mask == [True] + [False] * 11  # III, aVR, ... need lead II as well
    assert np.all(x[:, 1:] == 0)
    n = rows[0]["signal"].shape[1]
    m = int(n * 500 / 300)
    ref = interp1d(np.linspace(0, m - 1, n), rows[0]["signal"][0].astype(np.float64))(np.arange(m))
    ref = (ref - ref.mean()) / ref.std()
    np.testing.assert_allclose(x[:, 0].reshape(-1), ref[: x.shape[0] * 2500], atol=1e-5)


def test_precision_rounding(data_dir):
    rows = _ptbxl(data_dir, (4,))
    full = batch_signal_array(_run(rows, "ecg-fm")[0])
    half = batch_signal_array(_run(rows, "ecg-fm", precision="float16")[0])
    bf = batch_signal_array(_run(rows, "ecg-fm", precision="bfloat16")[0])
    assert half.dtype == np.float32 and not np.array_equal(half, full)
    assert np.all(np.abs(half - full) <= np.abs(full) * 2.0 ** -11 + 1e-30)
    assert np.all(bf.view(np.uint32) & 0xFFFF == 0)
    assert np.all(np.abs(bf - full) <= np.abs(full) * 2.0 ** -8 + 1e-30)


def test_dropped_flagged_records_are_named_with_verbose(cli, data_dir, tmp_path):
    heas = [data_dir / "cinc2021-sample" / f"{r}.hea" for r in ("JS20004", "JS20008", "E07500")]
    rec = tmp_path / "rec.parquet"
    assert cli(["convert", *heas, "-o", rec]).exit_code == 0
    res = cli(["-v", "preprocess", "--preset", "ecg-fm", "--drop-flagged", "flat", rec, "-o", tmp_path / "x.parquet"])
    assert res.exit_code == 0
    assert "dropped JS20004 (flagged flat)" in res.stderr and "dropped JS20008 (flagged flat)" in res.stderr
    assert "E07500" not in res.stderr and "dropped: 2 (flagged flat)" in res.stderr


def test_lead_lists_keep_names_with_spaces():
    from ecgtool.signal.leads import parse_lead_list

    assert parse_lead_list("I,II,V1") == ["I", "II", "V1"]
    assert parse_lead_list("I II v1") == ["I", "II", "V1"]
    assert parse_lead_list("MLII, avr") == ["II", "aVR"]
    assert parse_lead_list("col 0") == ["col 0"]
    assert parse_lead_list("col 0, col 1") == ["col 0", "col 1"]
    assert parse_lead_list("limb") == ["I", "II", "III", "aVR", "aVL", "aVF"]


def test_no_matching_lead_hint_can_be_followed(data_dir, tmp_path, cli):
    """The error suggests --leads NAME; running it as suggested works, for names with spaces too."""
    import shlex

    src = data_dir / "wfdb-samples" / "310derive.hea"
    assert cli(["convert", src, "-o", tmp_path / "r.parquet"]).exit_code == 0
    res = cli(["preprocess", "--preset", "ecg-fm", "--short", "pad", tmp_path / "r.parquet", "-o", tmp_path / "a.parquet"])
    assert res.exit_code == 1 and "nothing written" in res.stderr  # the one record failed
    assert "--leads 'col 0'" in res.stderr
    hint = shlex.split(res.stderr.split("e.g. ")[1].split(",")[0])
    res = cli(["preprocess", "--preset", "ecg-fm", "--short", "pad", *hint, tmp_path / "r.parquet", "-o", tmp_path / "b.parquet"])
    assert res.exit_code == 0, res.stderr
    with open_table(tmp_path / "b.parquet") as r:
        (batch,) = list(r)
    assert batch.column("leads").to_pylist() == [["col 0"]]


def test_numbered_ecg_channels_are_not_einthoven_leads():
    from ecgtool.signal.leads import normalize_leads

    assert normalize_leads(["ECG 1", "ECG2", "ECG I", "ecg-ii", "MLII"]) == ["ECG 1", "ECG2", "I", "II", "II"]


def test_long_records_cropped_by_a_preset_are_said_and_segment_keeps_them(data_dir, tmp_path, cli):
    """CPSC 2021 records (41-519 s) under --preset ecgfounder: the crop to 10 s is said; --segment 10 keeps all."""
    rec = tmp_path / "rec.parquet"
    heas = sorted((data_dir / "cpsc2021-sample").glob("*.hea"))[:3]
    assert cli(["convert", *heas, "-o", rec]).exit_code == 0
    r = cli(["preprocess", "--preset", "ecgfounder", rec, "-o", tmp_path / "one.parquet"])
    assert r.exit_code == 0 and "keep only their first 10 s" in r.stderr and "3 cropped to 10 s" in r.stderr
    r = cli(["preprocess", "--preset", "ecgfounder", "--segment", "10", rec, "-o", tmp_path / "all.parquet"])
    assert r.exit_code == 0, r.output
    import pyarrow.parquet as pq

    assert pq.read_metadata(tmp_path / "all.parquet").num_rows > 3 * 4


def test_hop_overlapping_windows(data_dir, tmp_path, cli):
    """--hop 5 with 10 s windows: a 30 s CinC 2017 strip gives windows at 0, 5, ..., 20 s; every other one is a
    window of the non-overlapping cut, and the ones between straddle two of them."""
    from ecgtool.io import read_table
    from ecgtool.signal.segment import n_windows, windows

    assert [n_windows(t, 4, 2) for t in (3, 4, 5, 6, 9)] == [0, 1, 1, 2, 3] and n_windows(9, 4) == 2
    x = np.arange(20.0).reshape(2, 10)
    w = windows(x, 4, 3)
    assert w.shape == (3, 2, 4) and np.array_equal(w[2], x[:, 6:10])
    assert np.array_equal(windows(x, 4), np.stack([x[:, 0:4], x[:, 4:8]]))
    rec = tmp_path / "rec.parquet"
    assert cli(["convert", data_dir / "cinc2017" / "A00001.hea", "-o", rec]).exit_code == 0
    for name, extra in (("hop", ["--hop", "5"]), ("cut", [])):
        r = cli(["preprocess", "--preset", "ecgtool-default", "--rename", "ECG=I", *extra, rec, "-o",
                 tmp_path / f"{name}.parquet"])
        assert r.exit_code == 0, r.output
    hop, _ = read_table(tmp_path / "hop.parquet")
    cut, _ = read_table(tmp_path / "cut.parquet")
    assert hop.column("segment").to_pylist() == [0, 1, 2, 3, 4] and cut.num_rows == 3
    H, C = (np.asarray(t.column("signal").to_pylist(), dtype=np.float32) for t in (hop, cut))
    assert np.array_equal(H[0::2], C)
    assert np.array_equal(H[1][:, :1250], C[0][:, 1250:]) and np.array_equal(H[1][:, 1250:], C[1][:, :1250])
    r = cli(["preprocess", "--hop", "5", rec, "-o", tmp_path / "x.parquet"])
    assert r.exit_code == 2 and "--hop needs --segment" in r.output
