"""Hospital and device formats (../shared/data/formats2): GE MUSE XML, SCP-ECG, EDF/EDF+, MFER, Apple Health
CSV, Contec ECG90A, the MIMIC-IV-ECG and CODE-15 archive layouts; their quirks; bad input.

Fidelity: every format's samples are compared with an independent decoding of the same file, written here
with the standard library and numpy from what the file states (base64 + CRC-32 for MUSE, the section
table and a bitwise CRC-CCITT for SCP, the tag layout for MFER, the CSV for Apple), with a second library
(pyedflib for EDF), or with another format's export of the same recording (Contec native, SCP, EDF).
"""

from __future__ import annotations

import base64
import csv
import os
import re
import shutil
import subprocess
import sys
import warnings
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, SHARED
from ecgtool.formats import read_file, sniff_format

DOC = ROOT / "docs" / "formats.md"


@pytest.fixture(scope="module")
def f2(data_dir) -> Path:
    p = data_dir / "formats2"
    if not p.is_dir():
        pytest.skip(f"{p} is not here")
    return p


def _one(path, **kw):
    recs = read_file(path, **kw)
    assert len(recs) == 1
    return recs[0]


def _lead(rec, name):
    return np.asarray(rec.signal[rec.leads.index(name)])


def _convert(cli, inputs, out, *extra):
    res = cli(["convert", *map(str, inputs), "-o", str(out), *extra])
    return res


def _rows(path):
    t = pq.read_table(path)
    out = {}
    sig = t.column("signal").to_pylist()
    for row, s in zip(t.drop_columns(["signal"]).to_pylist(), sig):
        row["signal"] = [np.asarray(x, dtype=np.float32) for x in s]
        out[row["record_id"]] = row
    return out


def _skipped(stderr: str) -> dict[str, str]:
    """record -> cause, from the one-line errors convert prints."""
    out = {}
    for line in stderr.splitlines():
        m = re.match(r"ecgtool: error: skipped (\S+): (.*)$", line)
        if m:
            assert m.group(1) not in out, f"two lines for {m.group(1)}"
            out[m.group(1)] = m.group(2)
    return out


# --------------------------------------------------------------------------- the whole folder


def test_the_folder_converts_every_valid_file_and_names_each_refusal(f2, tmp_path, cli):
    res = _convert(cli, [f2], tmp_path / "t.parquet")
    assert res.exit_code == 3, res.stderr
    skipped = _skipped(res.stderr)
    # the READMEs' non-compliant SCP file, and the MIMIC record whose waveform is not in the folder
    assert set(skipped) == {"Healforce_PC180D_62", "40689238"}, skipped
    assert "SCPECG" in skipped["Healforce_PC180D_62"] and "not EN 1064 compliant" in skipped["Healforce_PC180D_62"]
    assert "40689238.hea" in skipped["40689238"]
    rows = _rows(tmp_path / "t.parquet")
    # 5 MUSE, 5 SCP, 3 EDF, 1 MFER, 3 Apple, 2 Contec, 2 Philips, 1 HL7 aECG
    assert len(rows) == 22
    kinds = {}
    for rid, row in rows.items():
        kinds.setdefault(sniff_format(row["source"]), []).append(rid)
    assert {k: len(v) for k, v in kinds.items()} == {"muse": 5, "scp": 5, "edf": 3, "mfer": 1, "apple": 3,
                                                     "contec": 2, "philips": 2, "xml": 1}
    for row in rows.values():
        assert row["units"] == ["mV"] * len(row["leads"])
        assert all(np.isfinite(x).mean() > 0.4 for x in row["signal"][:2])
    # the quirks are said, naming the record
    err = res.stderr
    assert "PageWriterTC_sample: the XML declaration says encoding 'UTF-16' but the bytes are UTF-8" in err
    assert re.search(r"contec_0000050\.ECG: SCP-ECG section 3 declares 37855 samples .* holds 32767", err)
    assert re.search(r"ECGViewer_demo: SCP-ECG section 3 declares 10001 samples .* holds 10000", err)
    assert re.search(r"Cortrium_C3_1234_271020_212806: EDF: \d+ of \d+ samples .* outside the declared physical "
                     r"range", err)


def test_formats_are_recognised_from_content_not_names(f2, tmp_path, cli):
    picks = {
        "muse": f2 / "ge-muse-xml/easyRecg_muse_ecg1.xml",
        "scp": f2 / "scp-ecg/ECGToolkit_Example.scp",
        "edf": f2 / "edf/NihonKohden_EEG1200A_chtypes_edf.edf",
        "mfer": f2 / "mfer/NihonKohden_CNS6000_test-file.MWF",
        "apple": f2 / "apple-health-csv/ecg_2023-09-26_redacted.csv",
        "contec": f2 / "contec-ecg90a/0000053.ECG",
    }
    folder = tmp_path / "renamed"
    folder.mkdir()
    for fmt, src in picks.items():
        (folder / f"{fmt}_file.bin").symlink_to(src)
        assert sniff_format(folder / f"{fmt}_file.bin") == fmt
    (folder / "labels.csv").write_text("record,label\nA,N\n")  # a label table in the folder is not a record
    res = _convert(cli, [folder], tmp_path / "r.parquet")
    assert res.exit_code == 0, res.stderr
    assert "ignored 1 files" in res.stderr
    assert sorted(_rows(tmp_path / "r.parquet")) == sorted(f"{k}_file" for k in picks)


def test_wrong_encoding_declaration_is_recovered_and_device_variants_read(f2, tmp_path):
    page = f2 / "philips-xml-variants/PageWriterTC_sample.xml"
    rec = _one(page)
    assert any("declaration says encoding 'UTF-16' but the bytes are UTF-8" in w for w in rec.warnings)
    fixed = tmp_path / "fixed.xml"  # the same document with a true declaration reads the same, without a warning
    fixed.write_bytes(page.read_bytes().replace(b'encoding="UTF-16"', b'encoding="UTF-8"', 1))
    ref = _one(fixed)
    assert not ref.warnings and rec.leads == ref.leads and rec.fs == ref.fs == 500.0
    np.testing.assert_array_equal(rec.signal, ref.signal)
    mrx = _one(f2 / "philips-xml-variants/HeartStartMRx_129DYPRG.XML")
    assert mrx.signal.shape[0] == 12 and mrx.fs == 500.0
    contec = _one(f2 / "hl7-aecg-variants/Contec8000G_raw_data_contec_8000g.xml")
    assert contec.fs == 1000.0 and contec.signal.shape == (12, 10000)


# --------------------------------------------------------------------------- GE MUSE XML


def _muse_reference(path: Path, kind: str):
    """An independent decoding: stdlib XML, base64, zlib CRC-32, int16 LE × units per bit."""
    root = ET.parse(path).getroot()
    out = {}
    for w in root.iter("Waveform"):
        if w.findtext("WaveformType").lower() != kind:
            continue
        fs = float(w.findtext("SampleBase")) * 10 ** int(w.findtext("SampleExponent") or 0)
        for ld in w.iter("LeadData"):
            raw = base64.b64decode("".join(ld.findtext("WaveFormData").split()))
            assert zlib.crc32(raw) == int(ld.findtext("LeadDataCRC32"))
            x = np.frombuffer(raw, "<i2")
            assert len(x) == int(ld.findtext("LeadSampleCountTotal"))
            assert ld.findtext("LeadAmplitudeUnits") == "MICROVOLTS"
            out[ld.findtext("LeadID")] = x * float(ld.findtext("LeadAmplitudeUnitsPerBit")) / 1000.0
        return fs, out
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["rhythm", "median"])
def test_muse_samples_equal_an_independent_decoding(f2, kind):
    files = sorted((f2 / "ge-muse-xml").glob("*.xml"))
    assert len(files) == 5
    for path in files:
        fs, ref = _muse_reference(path, kind)
        rec = _one(path, waveform=kind)
        assert rec.fs == fs == 500.0
        assert rec.leads == ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
        assert rec.signal.shape == (12, 5000 if kind == "rhythm" else 600)
        assert set(ref) == {"I", "II", "V1", "V2", "V3", "V4", "V5", "V6"}
        for lead, x in ref.items():
            np.testing.assert_array_equal(_lead(rec, lead), x.astype(np.float32))
        i, ii = ref["I"], ref["II"]
        for lead, x in {"III": ii - i, "aVR": -(i + ii) / 2, "aVL": i - ii / 2, "aVF": ii - i / 2}.items():
            np.testing.assert_allclose(_lead(rec, lead), x, atol=1e-6)


def test_muse_median_agrees_with_the_rhythm_beats_at_the_files_qrs_times(f2):
    """The rhythm beats, averaged on the QRS times the file states, look like its median beats in every lead
    (the derived ones included): sampling rate, lead assignment and derivation hold together."""
    for path in sorted((f2 / "ge-muse-xml").glob("*.xml")):
        rhythm, median = _one(path), _one(path, waveform="median")
        # QRS times are in ms
        times = [int(q.findtext("Time")) * int(rhythm.fs) // 1000 for q in ET.parse(path).getroot().iter("QRS")]
        keep = [t for t in times if 300 <= t <= 5000 - 300]
        assert len(keep) >= 5
        beats = np.mean([rhythm.signal[:, t - 300:t + 300] for t in keep], axis=0)
        lags = set()
        for k, lead in enumerate(rhythm.leads):
            a, b = beats[k] - beats[k].mean(), median.signal[k] - median.signal[k].mean()
            r, lag = max((np.corrcoef(np.roll(a, s), b)[0, 1], s) for s in range(-100, 101))
            assert r > 0.97, (path.name, lead, r)
            assert np.ptp(beats[k]) == pytest.approx(np.ptp(median.signal[k]), rel=0.05), (path.name, lead)
            lags.add(lag)
        assert len(lags) == 1, (path.name, lags)  # one alignment for every lead


def test_muse_metadata_for_the_text_labeler(f2, tmp_path, cli):
    egm = _one(f2 / "ge-muse-xml/EGM_muse-sinus_redacted.xml")
    assert egm.meta["age"] == 43 and egm.meta["sex"] == "M" and egm.meta["device"] == "MV360"
    assert egm.meta["diagnosis"].split("; ")[:4] == [
        "Normal Sinus rhythm", "Anterior infarct, age undetermined",
        "T wave abnormality, consider lateral ischemia", "Abnormal ECG"]
    intro = _one(f2 / "ge-muse-xml/IntroECG_MUSE_20200923_093504_79000_example.xml")
    assert intro.meta["diagnosis"] == ("Sinus bradycardia with sinus arrhythmia with 1st degree A-V block; "
                                       "Otherwise normal ECG")  # the "Confirmed by" sign-off is left out
    assert str(intro.meta["base_datetime"]) == "2020-09-22 09:03:32"
    # label's text labeler reads the column straight away
    assert _convert(cli, [f2 / "ge-muse-xml"], tmp_path / "m.parquet").exit_code == 0
    res = cli(["label", str(tmp_path / "m.parquet"), "--vocab", "ecgfm-17", "-o", str(tmp_path / "l.parquet")])
    assert res.exit_code == 0, res.stderr
    lab = {r["record_id"]: r for r in pq.read_table(tmp_path / "l.parquet").to_pylist()}
    on = {rid: {k for k, v in row.items() if k != "record_id" and v == 1} for rid, row in lab.items()}
    assert on["IntroECG_MUSE_20200923_093504_79000_example"] == {
        "Sinus rhythm", "Bradycardia", "Atrioventricular block", "1st degree atrioventricular block"}
    assert on["EGM_muse-sinus_redacted"] == {"Sinus rhythm", "Infarction"}


def test_muse_waveform_option_and_its_help_example(f2, tmp_path, cli):
    muse = tmp_path / "muse"
    muse.mkdir()
    for p in (f2 / "ge-muse-xml").glob("*.xml"):
        (muse / p.name).symlink_to(p)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        # exactly as the --help example is written
        res = cli("ecgtool convert muse/ --waveform median -o medians.parquet".split()[1:])
    finally:
        os.chdir(cwd)
    assert res.exit_code == 0, res.stderr
    rows = _rows(tmp_path / "medians.parquet")
    assert len(rows) == 5 and all(len(r["signal"][0]) == 600 for r in rows.values())
    bad = cli(["convert", str(muse), "--waveform", "beats", "-o", str(tmp_path / "x.parquet")])
    assert bad.exit_code == 2 and "--waveform" in bad.stderr


# --------------------------------------------------------------------------- SCP-ECG


def _crc_table() -> list[int]:
    table = []
    for b in range(256):
        crc = b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def _crc_ccitt(data: bytes) -> int:
    """CRC-CCITT (polynomial 0x1021, initial 0xFFFF), written out here rather than taken from ecgtool."""
    crc = 0xFFFF
    for b in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC_TABLE[(crc >> 8) ^ b]
    return crc


def _scp_sections(buf: bytes) -> dict[int, tuple[int, int]]:
    """section id -> (offset, length), from section 0's pointer table."""
    n = int.from_bytes(buf[10:14], "little")
    out = {}
    for k in range(22, 6 + n, 10):
        sid, length, index = (int.from_bytes(buf[k:k + 2], "little"), int.from_bytes(buf[k + 2:k + 6], "little"),
                              int.from_bytes(buf[k + 6:k + 10], "little"))
        if length:
            out[sid] = (index - 1, length)
    return out


VALID_SCP = ["ECGToolkit_Example.scp", "ECGViewer_demo.scp", "WelchAllyn_ECG_20060620_112352_ANON000002.SCP",
             "WelchAllyn_ECG_20170504_163507_123456789.SCP", "contec_0000050.ECG.scp"]


def test_scp_crcs_lead_tables_and_sample_counts(f2):
    expect = {"ECGToolkit_Example.scp": (500.0, 12, 5000, 5000),
              "ECGViewer_demo.scp": (1000.0, 8, 10001, 10000),
              "WelchAllyn_ECG_20060620_112352_ANON000002.SCP": (1e6 / 1667, 8, 6000, 6000),
              "WelchAllyn_ECG_20170504_163507_123456789.SCP": (1e6 / 1667, 8, 6000, 6000),
              "contec_0000050.ECG.scp": (800.0, 12, 37855, 32767)}
    for name in VALID_SCP:
        buf = (f2 / "scp-ecg" / name).read_bytes()
        assert _crc_ccitt(buf[2:]) == int.from_bytes(buf[:2], "little")
        secs = _scp_sections(buf)
        for sid, (off, length) in secs.items():
            assert _crc_ccitt(buf[off + 2:off + length]) == int.from_bytes(buf[off:off + 2], "little"), (name, sid)
        off3 = secs[3][0] + 16
        n_leads = buf[off3]
        declared = {int.from_bytes(buf[off3 + 2 + 9 * k + 4:off3 + 2 + 9 * k + 8], "little")
                    - int.from_bytes(buf[off3 + 2 + 9 * k:off3 + 2 + 9 * k + 4], "little") + 1 for k in range(n_leads)}
        fs, leads, want_declared, stored = expect[name]
        rec = _one(f2 / "scp-ecg" / name)
        assert declared == {want_declared} and n_leads == leads == len(rec.leads)
        assert rec.signal.shape == (leads, stored)
        assert rec.fs == pytest.approx(fs)
        assert any("declares" in w for w in rec.warnings) == (want_declared != stored)
    anon = _one(f2 / "scp-ecg/WelchAllyn_ECG_20060620_112352_ANON000002.SCP")
    assert anon.leads == ["I", "II", "V3R", "V1", "V2", "V4", "V6", "V7"]
    assert any("byte-swapped" in w for w in anon.warnings)


def test_scp_raw_data_equal_an_independent_decoding(f2):
    """Uncompressed section 6 streams: int16 LE × the amplitude multiplier, read here from the bytes."""
    for name in ("ECGViewer_demo.scp", "contec_0000050.ECG.scp"):
        buf = (f2 / "scp-ecg" / name).read_bytes()
        secs = _scp_sections(buf)
        assert 2 not in secs  # no Huffman table
        off = secs[6][0] + 16
        avm = int.from_bytes(buf[off:off + 2], "little")
        rec = _one(f2 / "scp-ecg" / name)
        counts = [int.from_bytes(buf[off + 6 + 2 * k:off + 8 + 2 * k], "little") for k in range(len(rec.leads))]
        pos = off + 6 + 2 * len(rec.leads)
        for k, n in enumerate(counts):
            x = np.frombuffer(buf[pos:pos + n], "<i2") * (avm * 1e-6)
            pos += n
            np.testing.assert_array_equal(rec.signal[k], x.astype(np.float32))


def _scp_lead_measurements(f) -> dict[str, list[int]]:
    """Section 10: per-lead measurements (lead code, byte count, then int16 values; R amplitude at index 10, µV)."""
    from ecgtool.formats import scp as S

    d10, out, p = f.section(10), {}, 4
    for _ in range(S._u16(d10, 0)):
        code, n = S._u16(d10, p), S._u16(d10, p + 2)
        out[S.LEAD_CODES[code]] = [int.from_bytes(d10[p + 4 + 2 * i:p + 6 + 2 * i], "little", signed=True)
                                   for i in range(n // 2)]
        p += 4 + n
    return out


def test_scp_huffman_rhythm_agrees_with_the_files_reference_beats(f2):
    """Second differences (ECG Toolkit) and first differences (Welch Allyn) through the default Huffman table:
    every lead's stream ends with its declared samples (then only padding); the reference beats stored apart in
    section 5 recur in the decoded rhythm, lead by lead (the rhythm beats that match them, averaged, correlate
    > 0.97); and where the file gives lead measurements (section 10), the decoded reference beats have the R
    amplitudes it states. (Welch Allyn's rhythm beats are ~0.8 of its reference beats in amplitude, evenly over
    leads: the cart stores its rhythm filtered.)"""
    from ecgtool.formats import scp as S

    for name in ("ECGToolkit_Example.scp", "WelchAllyn_ECG_20170504_163507_123456789.SCP",
                 "WelchAllyn_ECG_20060620_112352_ANON000002.SCP"):
        f = S.parse((f2 / "scp-ecg" / name).read_bytes(), name)
        assert S.huffman_tables(f) == [S.DEFAULT_TABLE]
        defs, _ = S.leads(f)
        d5, d6 = f.section(5), f.section(6)
        assert d6[4] in (1, 2) and (d5[4], S._u16(d5, 0), S._u16(d5, 2)) == (d6[4], S._u16(d6, 0), S._u16(d6, 2))
        dec = S._Decoder(S.huffman_tables(f), name)
        pos = 6 + 2 * len(defs)
        for k, ld in enumerate(defs):
            n = S._u16(d6, 6 + 2 * k)
            values, used = dec.decode(d6[pos:pos + n], ld.declared, ld.name)
            rest = "".join(f"{b:08b}" for b in bytes(d6[pos:pos + n]))[used:]
            pos += n
            assert len(values) == ld.declared and len(rest) < 16 and len(set(rest)) <= 1, (name, ld.name, rest)
        fs, names, rhythm = S.rhythm(f)
        measured = _scp_lead_measurements(f) if 10 in f.sections else {}
        pos = 6 + 2 * len(defs)
        for k, lead in enumerate(names):
            n = S._u16(d5, 6 + 2 * k)
            ref, _ = dec.decode(d5[pos:pos + n], 10 ** 6, lead)
            pos += n
            ref = S.undifference(ref, d5[4]) * S._u16(d5, 0) * 1e-6
            win = np.lib.stride_tricks.sliding_window_view(rhythm[k].astype(np.float64), len(ref))
            wc, rc = win - win.mean(1, keepdims=True), ref - ref.mean()
            c = (wc @ rc) / (np.linalg.norm(wc, axis=1) * np.linalg.norm(rc) + 1e-12)
            peaks = [i for i in range(len(c)) if c[i] > 0.8 and c[i] == c[max(0, i - 100):i + 100].max()]
            assert len(peaks) >= 5, (name, lead)
            avg = win[peaks].mean(0)
            assert np.corrcoef(avg, ref)[0, 1] > 0.97, (name, lead)
            assert 0.75 < np.ptp(avg) / np.ptp(ref) < 1.05, (name, lead)
            if lead in measured:
                r_amp = measured[lead][10] / 1000.0
                assert ref.max() - np.median(ref) == pytest.approx(r_amp, rel=0.06, abs=0.015), (name, lead)


def test_scp_raw_export_matches_the_contec_native_file_and_the_edf_export(f2):
    """One Contec recording written three ways: the native file (decoded here: (count - 2048) × 5 µV, I = II -
    III), the SCP-ECG export (equal samples) and the EDF export, whose converter wrote the counts with a
    ±1000 mV / ±32768 range (so its values are 1000/32768/0.005 times larger, as the EDF states them)."""
    pyedflib = pytest.importorskip("pyedflib")
    buf = (f2 / "contec-ecg90a/0000050.ECG").read_bytes()
    counts = np.frombuffer(buf[43:len(buf) - 37], "<u2").reshape(-1, 8).T.astype(np.float64)
    ii, iii = (counts[0] - 2048) * 0.005, (counts[1] - 2048) * 0.005
    scp = _one(f2 / "scp-ecg/contec_0000050.ECG.scp")
    native = _one(f2 / "contec-ecg90a/0000050.ECG")
    n = 32767
    i = ii - iii
    for name, ref in {"I": i, "II": ii, "III": iii, "aVR": -(i + ii) / 2, "aVL": i - ii / 2,
                      "aVF": ii - i / 2}.items():
        np.testing.assert_allclose(_lead(native, name), ref, atol=1e-6)
        # the SCP writer stored the augmented leads in whole counts (within half a count)
        np.testing.assert_allclose(_lead(scp, name), ref[:n], atol=1e-6 if name in ("I", "II", "III") else 0.0026)
    assert np.isnan(_lead(native, "V1")).all() and (_lead(scp, "V1") == 0).all()
    edf = _one(f2 / "edf/contec_0000050.ECG.edf")
    with pyedflib.EdfReader(str(f2 / "edf/contec_0000050.ECG.edf")) as r:
        labels = r.getSignalLabels()
        for name in ("I", "II", "III"):
            ref = r.readSignal(labels.index(name))
            np.testing.assert_allclose(_lead(edf, name), ref, rtol=1e-6, atol=1e-6)
            slope = np.polyfit(_lead(scp, name), ref[:n], 1)[0]
            assert slope == pytest.approx(1000 / 32768 / 0.005, rel=1e-3)


def test_scp_non_compliant_and_damaged_files_are_refused(f2, tmp_path, cli):
    from ecgtool.errors import RecordError

    with pytest.raises(RecordError, match="not EN 1064 compliant: section 0 lacks the 'SCPECG'"):
        read_file(f2 / "scp-ecg/Healforce_PC180D_62.SCP")
    good = (f2 / "scp-ecg/WelchAllyn_ECG_20170504_163507_123456789.SCP").read_bytes()
    off6, len6 = _scp_sections(good)[6]
    crc = bytearray(good)  # a wrong CRC stored for section 6, the file's own CRC made right again
    crc[off6] ^= 0xFF
    crc[:2] = _crc_ccitt(bytes(crc[2:])).to_bytes(2, "little")
    (tmp_path / "badcrc.scp").write_bytes(bytes(crc))
    with pytest.raises(RecordError, match=r"section 6 CRC mismatch"):
        read_file(tmp_path / "badcrc.scp")
    data = bytearray(good)  # a damaged byte inside section 6
    data[off6 + len6 // 2] ^= 0x10
    (tmp_path / "damaged.scp").write_bytes(bytes(data))
    with pytest.raises(RecordError, match=r"section 6 CRC mismatch"):
        read_file(tmp_path / "damaged.scp")
    (tmp_path / "cut.scp").write_bytes(good[: len(good) // 2])
    with pytest.raises(RecordError, match=r"truncated \(the header says \d+ bytes, the file has \d+\)"):
        read_file(tmp_path / "cut.scp")


def test_scp_reference_beat_subtraction_and_bimodal_compression_are_refused(f2, tmp_path):
    from ecgtool.errors import RecordError

    good = (f2 / "scp-ecg/ECGToolkit_Example.scp").read_bytes()
    secs = _scp_sections(good)

    def patched(sid, at, value):
        b = bytearray(good)
        off, length = secs[sid]
        b[off + 16 + at] = value
        b[off:off + 2] = _crc_ccitt(bytes(b[off + 2:off + length])).to_bytes(2, "little")
        b[:2] = _crc_ccitt(bytes(b[2:])).to_bytes(2, "little")
        return bytes(b)

    (tmp_path / "rbs.scp").write_bytes(patched(3, 1, good[secs[3][0] + 17] | 1))
    with pytest.raises(RecordError, match="reference-beat subtraction is used"):
        read_file(tmp_path / "rbs.scp")
    (tmp_path / "bimodal.scp").write_bytes(patched(6, 5, 1))
    with pytest.raises(RecordError, match="bimodal compression is used"):
        read_file(tmp_path / "bimodal.scp")


# --------------------------------------------------------------------------- EDF / EDF+


def test_edf_physical_values_equal_pyedflib(f2):
    pyedflib = pytest.importorskip("pyedflib")
    for path in sorted((f2 / "edf").glob("*.edf")):
        recs = read_file(path, all_channels=True)
        got = {}
        for rec in recs:
            for name, x, unit in zip(rec.leads, rec.signal, rec.units):
                got[name] = (rec.fs, np.asarray(x), unit)
        bad = 0
        with pyedflib.EdfReader(str(path)) as r:
            for k, label in enumerate(r.getSignalLabels()):
                ref = r.readSignal(k)
                dig = r.readSignal(k, digital=True)
                h = r.getSignalHeader(k)
                bad_k = int(((dig < h["digital_min"]) | (dig > h["digital_max"])).sum())
                key = label[4:] if label.startswith("ECG ") else label
                fs, x, unit = got[key]
                assert fs == pytest.approx(r.getSampleFrequency(k)) and len(x) == r.getNSamples()[k]
                scale = {"uV": 1e-3, "mV": 1.0}.get(h["dimension"], 1.0)
                np.testing.assert_allclose(x, (ref * scale).astype(np.float32), rtol=1e-6, atol=1e-6 * np.ptp(ref) * scale)
                assert unit == ("mV" if h["dimension"] in ("uV", "mV") else h["dimension"])
                ecg = key.startswith("ECG") or h["dimension"] == "mV"
                bad += bad_k if ecg else 0
        default = read_file(path)
        assert sum(r.meta["q_out_of_range"] for r in default) == bad
    cortrium = _one(f2 / "edf/Cortrium_C3_1234_271020_212806.edf")
    frac = cortrium.meta["q_out_of_range"] / cortrium.signal.size
    assert 0.01 <= frac <= 0.03  # the README's 1–3 %, kept (not clipped)
    assert cortrium.signal.min() < -2.4 and cortrium.signal.max() > 2.4


def test_edf_channels_by_label_and_transducer_and_rate_groups(f2):
    path = f2 / "edf/Cortrium_C3_1234_271020_212806.edf"
    rec = _one(path)
    assert rec.leads == ["ECG1", "ECG2", "ECG3"] and rec.fs == 256.0  # accelerometers say "Ambu electrodes" too
    both = read_file(path, all_channels=True)
    assert [(r.fs, r.id_suffix, len(r.leads)) for r in both] == [(256.0, None, 3), (256 / 12, "@21.3333Hz", 5)]
    assert both[1].units[:3] == ["mg"] * 3
    one = _one(path, all_channels=True, fs=256)
    assert len(one.leads) == 8 and one.signal.shape == (8, 261780)
    nk = _one(f2 / "edf/NihonKohden_EEG1200A_chtypes_edf.edf")
    assert nk.leads == ["ECG1", "ECG2"] and nk.signal.shape == (2, 1000)
    assert len(nk.meta["annotations"]) == 8 and "+0s Segment: REC START LTM+6 EEG" in nk.meta["annotations"]
    assert nk.meta["device"] == "NKC-EEG-1200A_V01.00" and nk.meta["age"] == 30


def test_edf_header_that_lies_truncated_data_and_no_ecg(f2, tmp_path):
    from ecgtool.errors import RecordError

    src = (f2 / "edf/Cortrium_C3_1234_271020_212806.edf").read_bytes()
    lie = bytearray(src)
    lie[184:192] = b"2560    "
    (tmp_path / "lie.edf").write_bytes(bytes(lie))
    with pytest.raises(RecordError, match=r"header length field says 2560 bytes, but 8 signals make a 2304-byte"):
        read_file(tmp_path / "lie.edf")
    (tmp_path / "cut.edf").write_bytes(src[: len(src) // 2])
    rec = _one(tmp_path / "cut.edf")
    want = (len(src) // 2 - 2304) // 82
    assert rec.signal.shape == (3, want * 12)
    assert any(f"declares 21815 data records, the file holds {want}" in w for w in rec.warnings)
    (tmp_path / "hdr.edf").write_bytes(src[:1000])
    with pytest.raises(RecordError, match="truncated inside the header"):
        read_file(tmp_path / "hdr.edf")
    eeg = (f2 / "edf/NihonKohden_EEG1200A_chtypes_edf.edf").read_bytes()
    ns = int(eeg[252:256])
    labels = bytearray(eeg)
    for k in range(ns):
        lab = labels[256 + 16 * k:256 + 16 * k + 16]
        if lab.startswith(b"ECG"):
            labels[256 + 16 * k:256 + 16 * k + 16] = b"EEG X".ljust(16)
    (tmp_path / "eeg.edf").write_bytes(bytes(labels))
    with pytest.raises(RecordError, match="no ECG channel among its 42 signals") as exc:
        read_file(tmp_path / "eeg.edf")
    assert "--all-channels" in exc.value.hint


# --------------------------------------------------------------------------- MFER


def _mfer_reference(path: Path):
    """Decoded from the layout the file's README states: one WAV tag (0x1E, 4-byte length) of 12 sequences, each
    3 × 15000 int16 samples (channels 0, 1, 5 at 250 Hz) and 3 × 7500 (channels 2–4 at 125 Hz), in channel order."""
    buf = path.read_bytes()
    at = buf.index(b"\x1e\x84")
    n = int.from_bytes(buf[at + 2:at + 6], "big")
    data = np.frombuffer(buf[at + 6:at + 6 + n], "<i2")
    blocks = [15000, 15000, 7500, 7500, 7500, 15000]
    seq = data.reshape(12, sum(blocks))
    edges = np.cumsum([0] + blocks)
    return [seq[:, edges[c]:edges[c + 1]].reshape(-1) for c in range(6)], buf[at + 6 + n:]


def test_mfer_samples_equal_an_independent_decoding(f2):
    path = f2 / "mfer/NihonKohden_CNS6000_test-file.MWF"
    chans, tail = _mfer_reference(path)
    assert tail[:1] == b"\x80"  # END follows the waveform
    rec = _one(path)
    assert rec.fs == 250.0 and rec.leads == ["II", "V5"] and rec.signal.shape == (2, 180000)
    for k in (0, 1):  # the declared null value, 0x8000, marks missing samples
        ref = np.where(chans[k] == -32768, np.nan, chans[k] * 2e-3).astype(np.float32)
        np.testing.assert_allclose(rec.signal[k], ref, rtol=1e-6)
        assert 0 < np.isnan(ref).mean() < 0.2
    assert -0.15 < rec.signal[0, :15000].min() < -0.13 and 0.64 < rec.signal[0, :15000].max() < 0.66
    assert rec.meta["patient_id"] == "12345" and str(rec.meta["base_datetime"]) == "2019-06-19 13:20:00"
    both = read_file(path, all_channels=True)
    assert [(r.fs, r.id_suffix) for r in both] == [(250.0, None), (125.0, "@125Hz")]
    press = both[1]
    assert press.units == ["mmHg"] * 3
    np.testing.assert_allclose(press.signal[0], np.where(chans[2] == -32768, np.nan, chans[2] * 0.125), rtol=1e-6)
    assert 70 < np.nanmin(press.signal[0]) and np.nanmax(press.signal[0]) < 120
    one = _one(path, all_channels=True, fs=250)
    assert one.signal.shape == (6, 180000)


def test_mfer_truncated(f2, tmp_path):
    from ecgtool.errors import RecordError

    buf = (f2 / "mfer/NihonKohden_CNS6000_test-file.MWF").read_bytes()
    at = buf.index(b"\x1e\x84") + 6
    (tmp_path / "cut.mwf").write_bytes(buf[: at + 5 * 135000 + 1000])
    rec = _one(tmp_path / "cut.mwf")
    assert rec.signal.shape == (2, 5 * 15000)
    assert any("declares 12 sequences, the waveform data hold 5 whole ones" in w for w in rec.warnings)
    (tmp_path / "hdr.mwf").write_bytes(buf[:300])
    with pytest.raises(RecordError, match="MFER: truncated"):
        read_file(tmp_path / "hdr.mwf")


# --------------------------------------------------------------------------- Apple Health CSV


def test_apple_health_csv_samples_and_header(f2):
    seen = {}
    for path in sorted((f2 / "apple-health-csv").glob("*.csv")):
        with open(path, encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        head = {r[0]: r[1] for r in rows if len(r) == 2}
        values = np.array([float(r[0]) for r in rows if len(r) == 1 and r[0].strip()])
        rec = _one(path)
        assert rec.leads == ["I"] and rec.units == ["mV"]
        assert rec.fs == float(head["Sample Rate"].split()[0])
        np.testing.assert_allclose(rec.signal[0], (values / 1000).astype(np.float32), rtol=1e-7)
        assert rec.meta["classification"] == head["Classification"] == rec.meta["diagnosis"]
        assert rec.meta["device"].startswith("Watch5,1")
        seen[path.name] = rec
    short = seen["ecg_2023-09-26_redacted.csv"]
    assert short.signal.shape[1] == 13360 and 26.0 < 13360 / short.fs < 26.2  # kept as recorded, not padded to 30 s
    assert seen["ecg_2024-01-24_redacted.csv"].meta["classification"] == "Heart Rate Below 50"


@pytest.mark.parametrize("rel", ["ge-muse-xml/EGM_muse-sinus_redacted.xml", "apple-health-csv/ecg_2021-12-17_redacted.csv"])
def test_predict_summarises_one_file_straight_from_its_path(f2, rel):
    path = f2 / rel
    res = subprocess.run(["script", "-qec", f"{sys.executable} -m ecgtool predict {path}", "/dev/null"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert path.stem in res.stdout and "most probable" in res.stdout
    assert res.stdout.count("most probable") == 1


# --------------------------------------------------------------------------- archive layouts


def _ptbxl(data_dir, n):
    wfdb = pytest.importorskip("wfdb")
    out = []
    for i in range(1, n + 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out.append(wfdb.rdrecord(str(data_dir / f"ptbxl-500/records500/00000/{i:05d}_hr")))
    return out


def test_mimic_iv_ecg_layout(f2, data_dir, tmp_path, cli):
    wfdb = pytest.importorskip("wfdb")
    root = tmp_path / "mimic"
    root.mkdir()
    for name in ("record_list.csv", "machine_measurements.csv"):
        shutil.copy(f2 / "mimic-iv-ecg" / name, root / name)
    with open(root / "record_list.csv", "a") as fh:  # a second, listed record whose files are missing
        fh.write("10000033,40000001,40000001,2181-01-01 00:00:00,files/p1000/p10000033/s40000001/40000001\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rec = wfdb.rdrecord(str(data_dir / "ptbxl-500/records500/00000/00001_hr"), physical=False)
    folder = root / "files/p1000/p10000032/s40689238"
    folder.mkdir(parents=True)
    wfdb.wrsamp("40689238", fs=rec.fs, units=rec.units, sig_name=rec.sig_name, d_signal=rec.d_signal,
                fmt=rec.fmt, adc_gain=rec.adc_gain, baseline=rec.baseline, write_dir=str(folder))
    res = _convert(cli, [root], tmp_path / "mimic.parquet")
    assert res.exit_code == 3
    assert set(_skipped(res.stderr)) == {"40000001"}
    assert "MIMIC-IV-ECG layout" in res.stderr
    rows = _rows(tmp_path / "mimic.parquet")
    row = rows["40689238"]
    assert row["patient_id"] == "10000032" and row["study_id"] == "40689238"
    assert row["cart_id"] == 6848296 and row["report_0"] == "Sinus rhythm"
    assert row["diagnosis"] == "Sinus rhythm; Possible right atrial abnormality; Borderline ECG"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = wfdb.rdrecord(str(folder / "40689238")).p_signal.T.astype(np.float32)
    np.testing.assert_array_equal(np.stack(row["signal"]), ref)


def _code15(tmp_path: Path, data_dir, pad_row=True) -> tuple[Path, dict[str, np.ndarray]]:
    """A CODE-15-layout folder made from PTB-XL records: 400 Hz, centred and zero-padded to 4096 samples."""
    h5py = pytest.importorskip("h5py")
    from scipy.signal import resample_poly

    root = tmp_path / "code15"
    root.mkdir()
    recs = _ptbxl(data_dir, 3)
    tr = np.zeros((len(recs) + pad_row, 4096, 12), dtype=np.float32)
    ids = [101, 102, 103] + ([0] if pad_row else [])
    want = {}
    for k, r in enumerate(recs):
        x = resample_poly(r.p_signal, 4, 5, axis=0).astype(np.float32)[:4000]
        tr[k, 48:4048] = x
        want[str(ids[k])] = x.T
    with h5py.File(root / "exams_part0.hdf5", "w") as h:
        h["tracings"] = tr
        h["exam_id"] = np.array(ids, dtype=np.int64)
    with open(root / "exams.csv", "w") as fh:
        fh.write("exam_id,age,is_male,nn_predicted_age,1dAVb,RBBB,LBBB,SB,ST,AF,patient_id,death,timey,"
                 "normal_ecg,trace_file\n")
        for k, i in enumerate(ids[:3]):
            fh.write(f"{i},{50 + k},{'True' if k != 1 else 'False'},55.0,False,False,False,False,False,"
                     f"{'True' if k == 2 else 'False'},{900 + k},,,True,exams_part0.hdf5\n")
    return root, want


def test_code15_layout_streams_one_exam_at_a_time(data_dir, tmp_path, cli):
    root, want = _code15(tmp_path, data_dir)
    res = _convert(cli, [root], tmp_path / "c.parquet", "--batch-size", "1")
    assert res.exit_code == 0, res.stderr
    assert "skipped 1 rows with exam_id 0" in res.stderr
    f = pq.ParquetFile(tmp_path / "c.parquet")
    assert f.metadata.num_row_groups == 3  # one exam per batch
    rows = _rows(tmp_path / "c.parquet")
    assert sorted(rows) == ["101", "102", "103"]
    for rid, x in want.items():
        row = rows[rid]
        assert row["fs"] == 400.0 and row["leads"][3] == "aVR"
        np.testing.assert_array_equal(np.stack(row["signal"]), x)  # the padding cut off, the ECG as written
        assert row["study_id"] == rid
    assert [rows[r]["sex"] for r in ("101", "102", "103")] == ["M", "F", "M"]
    assert [rows[r]["patient_id"] for r in ("101", "102", "103")] == ["900", "901", "902"]
    assert rows["103"]["AF"] is True and rows["101"]["age"] == 50
    # one part file named by its path gives the same records
    res = _convert(cli, [root / "exams_part0.hdf5"], tmp_path / "d.parquet")
    assert res.exit_code == 0 and sorted(_rows(tmp_path / "d.parquet")) == ["101", "102", "103"]
    # a damaged part file is one record that says so; the other part files go on
    data = (root / "exams_part0.hdf5").read_bytes()
    (root / "exams_part1.hdf5").write_bytes(data[: len(data) // 3])
    res = _convert(cli, [root], tmp_path / "e.parquet")
    assert res.exit_code == 3 and set(_skipped(res.stderr)) == {"exams_part1"}
    assert "cannot read the HDF5 file" in _skipped(res.stderr)["exams_part1"]
    assert sorted(_rows(tmp_path / "e.parquet")) == ["101", "102", "103"]


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_each_give_one_line_and_the_others_go_on(f2, tmp_path, cli):
    bad = tmp_path / "bad"
    bad.mkdir()
    muse = (f2 / "ge-muse-xml/easyRecg_muse_ecg1.xml").read_bytes()
    (bad / "muse_cut.xml").write_bytes(muse[: len(muse) // 2])
    text = muse.decode("latin-1")
    rhythm = text.index("<WaveformType>Rhythm</WaveformType>")
    i = text.index("<WaveFormData>", text.index("<LeadID>V3</LeadID>", rhythm)) + len("<WaveFormData>") + 40
    flipped = "B" if text[i] != "B" else "C"
    (bad / "muse_crc.xml").write_bytes((text[:i] + flipped + text[i + 1:]).encode("latin-1"))
    xxe = text.replace('<!DOCTYPE RestingECG SYSTEM "restecg.dtd">',
                       '<!DOCTYPE RestingECG [<!ENTITY leak SYSTEM "file:///etc/hostname">]>')
    xxe = xxe.replace("<PatientID>JAX01234</PatientID>", "<PatientID>&leak;</PatientID>")
    (bad / "muse_xxe.xml").write_bytes(xxe.encode("latin-1"))
    scp = (f2 / "scp-ecg/ECGToolkit_Example.scp").read_bytes()
    (bad / "scp_cut.scp").write_bytes(scp[:20000])
    off6, _ = _scp_sections(scp)[6]
    b = bytearray(scp)
    b[off6] ^= 0x55
    b[:2] = _crc_ccitt(bytes(b[2:])).to_bytes(2, "little")
    (bad / "scp_crc.scp").write_bytes(bytes(b))
    edf = (f2 / "edf/NihonKohden_EEG1200A_chtypes_edf.edf").read_bytes()
    (bad / "edf_cut.edf").write_bytes(edf[:5000])
    lie = bytearray(edf)
    lie[184:192] = b"256     "
    (bad / "edf_lie.edf").write_bytes(bytes(lie))
    mfer = (f2 / "mfer/NihonKohden_CNS6000_test-file.MWF").read_bytes()
    (bad / "mfer_cut.mwf").write_bytes(mfer[:380])
    apple = (f2 / "apple-health-csv/ecg_2021-12-17_redacted.csv").read_bytes()
    (bad / "apple_cut.csv").write_bytes(apple[: apple.index(b"Lead,")])
    contec = (f2 / "contec-ecg90a/0000053.ECG").read_bytes()
    (bad / "contec_cut.ECG").write_bytes(contec[:10001])
    (bad / "empty.scp").write_bytes(b"")
    (bad / "good.xml").symlink_to(f2 / "ge-muse-xml/easyRecg_muse_ecg2.xml")
    res = _convert(cli, [bad], tmp_path / "b.parquet")
    assert res.exit_code == 3
    got = _skipped(res.stderr)
    want = {
        "muse_cut": "not well-formed XML",
        "muse_crc": "lead V3: CRC-32 mismatch",
        "muse_xxe": "refused unsafe XML",
        "scp_cut": "SCP-ECG: truncated",
        "scp_crc": "section 6 CRC mismatch",
        "edf_cut": "truncated inside the header",
        "edf_lie": "the header length field says 256 bytes",
        "mfer_cut": "MFER: ",
        "apple_cut": "holds no samples: truncated",
        "empty": "empty (0 bytes)",
        "contec_cut": "Contec ECG90A: 10001 bytes is not",
    }
    assert set(got) == set(want), got
    for rid, cause in want.items():
        assert cause in got[rid], (rid, got[rid])
    assert "hostname" not in res.stderr and list(_rows(tmp_path / "b.parquet")) == ["good"]


# --------------------------------------------------------------------------- docs/formats.md


def _blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def test_the_formats_doc_lists_every_format():
    text = DOC.read_text(encoding="utf-8")
    for name in ("GE MUSE XML", "SCP-ECG", "EDF", "MFER", "Apple Health", "MIMIC-IV-ECG", "CODE-15", "Contec",
                 "Philips", "HL7 aECG", "DICOM", "WFDB"):
        assert name in text
    assert len(_blocks()) >= 2


@pytest.mark.parametrize("k", range(len(_blocks()) if DOC.exists() else 0))
def test_formats_doc_example(k, data_dir, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "shared").symlink_to(SHARED)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    script = _blocks()[k]
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=work, capture_output=True, text=True, env=env)
    assert r.returncode == 0, f"{script}\n{r.stderr[-3000:]}"
