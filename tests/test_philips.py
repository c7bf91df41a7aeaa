"""Philips Sierra XML (<restingecgdata>, XLI-compressed) through ecgtool convert: values, units, leads,
metadata, agreement with the same ECG exported as HL7 aECG, damaged files, unsafe XML."""

from __future__ import annotations

import base64
import datetime as dt
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from ecgtool.errors import RecordError
from ecgtool.formats import read_file, reader_for
from ecgtool.io import read_table
from ecgtool.io.schema import row_leads
from ecgtool.signal.leads import STANDARD_12

sierraecg = pytest.importorskip("sierraecg")

# (folder/file, document version, text encoding)
EXAMPLES = {
    "129DYPRG": ("1_03/129DYPRG.XML", "1.03", "utf-8"),
    "3191723_ZZDEMOPTONLY_1-04_orig": ("1_04/3191723_ZZDEMOPTONLY_1-04_orig.xml", "1.04", "utf-16"),
    "ad4d3d80-d165_1-04_orig": ("1_04/ad4d3d80-d165_1-04_orig.xml", "1.04", "utf-16"),
    "2020-5-18_15-48-11": ("1_04_01/2020-5-18_15-48-11.xml", "1.04.01", "utf-16"),
}
# The same ECG as ad4d3d80-d165_1-04_orig, exported by Philips as HL7 aECG.
CONVERTED = "ad4d3d80-d165_1-04_converted"


@pytest.fixture(scope="module")
def examples(data_dir) -> Path:
    folder = data_dir / "formats/philips-xml/examples/xml"
    if not folder.is_dir():
        pytest.skip(f"{folder} is not here")
    return folder


@pytest.fixture(scope="module")
def converted(examples, tmp_path_factory) -> dict[str, dict]:
    """The whole example folder through ecgtool.convert (the library), read back row by row."""
    from ecgtool.convert import convert

    out = tmp_path_factory.mktemp("philips") / "x.parquet"
    convert([str(examples)], str(out), argv=["test"])
    return _rows(out)


def _rows(path) -> dict[str, dict]:
    table, _ = read_table(str(path))
    col = table.column("signal").combine_chunks()
    out = {}
    for i, row in enumerate(table.drop_columns(["signal"]).to_pylist()):
        row["signal"] = np.stack(row_leads(col, i))
        out[row["record_id"]] = row
    return out


def _text(path: Path, encoding: str) -> str:
    return path.read_text(encoding=encoding)


def _resolution_uv(text: str) -> float:
    """µV per count, as the document states it (1.04: <resolution>, 1.03: <signalresolution>)."""
    m = re.search(r"<signalcharacteristics>.*?<(?:signal)?resolution>([\d.]+)</", text, re.S)
    return float(m.group(1))


def _waveform_span(text: str) -> tuple[int, int]:
    a = text.index(">", text.index("<parsedwaveforms")) + 1
    return a, text.index("</parsedwaveforms>", a)


# --------------------------------------------------------------------------- reading the examples


def test_sniffing_picks_the_philips_reader(examples, tmp_path):
    for rel, _version, _enc in EXAMPLES.values():
        assert reader_for(examples / rel).__name__ == "read_philips", rel
    assert reader_for(examples / f"1_04/{CONVERTED}.xml").__name__ == "read_xml"
    # no .xml extension: recognised from the first bytes (UTF-16 with a byte-order mark)
    bare = tmp_path / "philips-ecg"
    shutil.copy(examples / EXAMPLES["2020-5-18_15-48-11"][0], bare)
    assert reader_for(bare).__name__ == "read_philips"
    assert read_file(bare)[0].signal.shape[0] == 12
    # a root element beyond the bytes sniffed: the HL7 reader hands the document over
    src = examples / EXAMPLES["129DYPRG"][0]
    text = src.read_text()
    i = text.index("<restingecgdata")
    late = tmp_path / "late.xml"
    late.write_text(text[:i] + "<!-- " + "x" * 20000 + " -->\n" + text[i:])
    assert reader_for(late).__name__ == "read_xml"
    np.testing.assert_array_equal(read_file(late)[0].signal, read_file(src)[0].signal)


def test_every_example_converts_with_shape_rate_units(examples, converted):
    assert set(converted) == set(EXAMPLES) | {CONVERTED}
    for rid, (rel, _version, _enc) in EXAMPLES.items():
        row = converted[rid]
        assert row["fs"] == 500.0
        assert row["leads"] == list(STANDARD_12)
        assert row["units"] == ["mV"] * 12
        sig = row["signal"]
        assert sig.dtype == np.float32 and sig.shape[0] == 12
        # ~10.5 s of ECG: the 11 s stored per lead less the trailing calibration stretch
        assert 5000 <= sig.shape[1] < 5500, (rid, sig.shape)
        assert np.isfinite(sig).all()
        centred = sig - np.median(sig, axis=1, keepdims=True)
        ptp = np.ptp(centred, axis=1)
        # QRS of the order of a millivolt: lead II between 0.5 and 3 mV, no lead above 6 mV once centred
        assert 0.5 < ptp[1] < 3.0, (rid, ptp)
        assert ptp.max() < 15.0 and np.median(ptp) > 0.4, (rid, ptp)
        assert row["source"].endswith(rel)


def test_values_are_counts_times_the_stated_resolution(examples, converted):
    """Samples equal sierraecg's counts × <resolution> µV; the stretch cut off is the 1 mV calibration pulse."""
    for rid, (rel, _version, enc) in EXAMPLES.items():
        text = _text(examples / rel, enc)
        res = _resolution_uv(text)
        assert res == 5.0
        counts = np.stack([lead.samples.astype(np.int64) for lead in sierraecg.read_file(str(examples / rel)).leads])
        assert counts.shape == (12, 5500)  # durationperchannel="11000" at 500 Hz
        sig = converted[rid]["signal"]
        n = sig.shape[1]
        np.testing.assert_array_equal(sig, (counts[:, :n] * (res * 1e-3)).astype(np.float32))
        tail = counts[:, n:]
        assert (tail == tail[0]).all(), rid  # the same on every lead: not ECG
        assert (counts[:, n - 1] != counts[0, n - 1]).any()  # and the ECG runs up to there
        assert tail.max() * res == 1000.0  # the calibration pulse: 1 mV, which pins the unit to µV per count


def test_derived_limb_leads_satisfy_einthoven_and_goldberger(converted):
    for rid in EXAMPLES:
        sig = converted[rid]["signal"].astype(np.float64)
        q = 5e-3  # one count, in mV
        I, II, III, aVR, aVL, aVF = sig[:6]
        assert np.abs(III - (II - I)).max() <= 2 * q + 1e-6, rid
        assert np.abs(aVR + (I + II) / 2).max() <= 1.5 * q + 1e-6, rid
        assert np.abs(aVL - (I - III) / 2).max() <= 1.5 * q + 1e-6, rid
        assert np.abs(aVF - (II + III) / 2).max() <= 1.5 * q + 1e-6, rid


def test_metadata(converted):
    a = converted["129DYPRG"]  # 1.03: <age><years>50</years></age>
    assert (a["age"], a["sex"]) == (50.0, "M")
    assert a["base_datetime"] == dt.datetime(2011, 12, 1, 7, 27, 34)
    assert a["diagnosis"].startswith("Sinus bradycardia; Nonspecific intraventricular conduction delay")
    b = converted["ad4d3d80-d165_1-04_orig"]  # 1.04: born 1976-01-01, recorded 2008-12-23
    assert (b["age"], b["sex"]) == (32.0, "F")
    assert b["base_datetime"] == dt.datetime(2008, 12, 23, 19, 44, 46)
    c = converted["2020-5-18_15-48-11"]  # <sex>Unknown</sex>; defaultage="50" is not the age
    assert c["sex"] is None and c["age"] == 69.0
    assert c["diagnosis"] == "Sinus rhythm; Abnormal R-wave progression, early transition"


def test_age_in_months_and_without_a_date_of_birth(examples, tmp_path):
    text = (examples / EXAMPLES["129DYPRG"][0]).read_text()
    (tmp_path / "months.xml").write_text(text.replace("<age><years>50</years></age>", "<age><months>6</months></age>"))
    (tmp_path / "none.xml").write_text(text.replace("<age><years>50</years></age>", "<age defaultage=\"50\"/>"))
    assert read_file(tmp_path / "months.xml")[0].meta["age"] == 0.5
    assert "age" not in read_file(tmp_path / "none.xml")[0].meta


def test_same_ecg_as_philips_hl7_export(converted):
    """_orig.xml (Sierra XML 1.04) and _converted.xml (Philips' HL7 aECG export of the same acquisition)."""
    p = converted["ad4d3d80-d165_1-04_orig"]["signal"].astype(np.float64)
    h = converted[CONVERTED]["signal"].astype(np.float64)
    assert converted[CONVERTED]["leads"] == list(STANDARD_12) and converted[CONVERTED]["sex"] == "F"
    # the export keeps all 11 s, calibration pulse included
    assert h.shape == (12, 5500) and np.isclose(h[:, 5350:5450], 1.0, atol=0.01).all()
    n = p.shape[1]
    diff = h[:, :n] - p
    # equal to within 4 counts (20 µV), RMS under one count; what differs is above 40 Hz
    assert np.abs(diff).max() <= 0.0200001
    assert np.sqrt((diff**2).mean()) < 0.005
    from scipy.signal import butter, filtfilt

    assert np.abs(filtfilt(*butter(4, 40 / 250), diff, axis=1)).max() < 0.01
    for k in range(12):
        assert np.corrcoef(h[k, :n], p[k])[0, 1] > 0.995


def test_cli_converts_every_example_to_the_same_table(examples, converted, tmp_path, cli):
    out = tmp_path / "out.parquet"
    res = cli(["convert", examples, "-o", out])
    assert res.exit_code == 0, res.stderr
    assert "Traceback" not in res.stderr
    rows = _rows(out)
    assert set(rows) == set(converted)
    for rid, row in rows.items():
        np.testing.assert_array_equal(row["signal"], converted[rid]["signal"])
        assert row["leads"] == converted[rid]["leads"] and row["age"] == converted[rid]["age"]
    # and one file on its own (UTF-16)
    single = tmp_path / "one.parquet"
    assert cli(["convert", examples / EXAMPLES["2020-5-18_15-48-11"][0], "-o", single]).exit_code == 0
    assert pq.read_table(single).num_rows == 1


# --------------------------------------------------------------------------- damaged and unsupported files


def _xli_chunks(raw: bytes) -> list[tuple[int, int]]:
    """(offset, payload size) of each lead's XLI chunk: an 8-byte header whose first 4 bytes are the size."""
    out, off = [], 0
    while off < len(raw):
        size = struct.unpack_from("<i", raw, off)[0]
        out.append((off, size))
        off += 8 + size
    return out


def test_damaged_files_give_one_line_each_and_the_folder_goes_on(examples, tmp_path, cli):
    folder = tmp_path / "ecgs"
    folder.mkdir()
    good = EXAMPLES["2020-5-18_15-48-11"][0]
    shutil.copy(examples / good, folder / "good.xml")
    shutil.copy(examples / EXAMPLES["129DYPRG"][0], folder / "good103.XML")
    text = _text(examples / good, "utf-16")
    a, b = _waveform_span(text)
    b64 = text[a:b]
    raw = base64.b64decode(b64)
    chunks = _xli_chunks(raw)
    assert len(chunks) >= 12

    def write(name, body, encoding="utf-16"):
        (folder / f"{name}.xml").write_text(body, encoding=encoding)

    # the Base64 text cut in half
    write("b64cut", text[:a] + b64[: len(b64) // 2] + text[b:])
    # lead V1's compressed data cut in half (valid Base64 around it)
    off, size = chunks[6]
    write("v1cut", text[:a] + base64.b64encode(raw[: off + 8 + size // 2] + raw[off + 8 + size:]).decode() + text[b:])
    # fewer compressed leads than the 12 the file lists
    write("fewer", text[:a] + base64.b64encode(raw[: chunks[11][0]]).decode() + text[b:])
    # the XML itself cut off
    write("xmlcut", text[: len(text) // 2])
    # a version this reader does not know, and no waveforms
    write("v102", text.replace("<documentversion>1.04.01<", "<documentversion>1.02<", 1))
    write("nowaves", text[: text.index("<parsedwaveforms")] + text[b + len("</parsedwaveforms>"):])
    write("uncompressed", text.replace('compression="XLI"', 'compression="None"', 1))
    write("noresolution", re.sub(r"<resolution>5</resolution>", "", text, count=1).replace(' resolution="5"', "", 1))

    out = tmp_path / "out.parquet"
    res = cli(["convert", folder, "-o", out])
    assert res.exit_code == 3, res.stderr  # records were skipped
    assert "Traceback" not in res.stderr
    expect = {
        "b64cut": "damaged or truncated waveform data",
        "v1cut": "damaged or truncated waveform data",
        "fewer": "damaged or truncated waveform data",
        "xmlcut": "not well-formed XML",
        "v102": "version 1.02 is not read",
        "nowaves": "without <parsedwaveforms>",
        "uncompressed": "compression None are not read",
        "noresolution": "no signal resolution",
    }
    for name, cause in expect.items():
        lines = [line for line in res.stderr.splitlines() if f"{name}:" in line]
        assert len(lines) == 1, (name, res.stderr)
        assert cause in lines[0], (name, lines[0])
    rows = _rows(out)
    assert sorted(rows) == ["good", "good103"]
    assert rows["good"]["signal"].shape[0] == 12


def test_library_errors_are_record_errors(examples, tmp_path):
    text = _text(examples / EXAMPLES["2020-5-18_15-48-11"][0], "utf-16")
    a, b = _waveform_span(text)
    bad = tmp_path / "bad.xml"
    bad.write_text(text[:a] + "AAAA" + text[b:], encoding="utf-16")
    with pytest.raises(RecordError) as exc:
        read_file(bad)
    assert exc.value.record == "bad" and "\n" not in str(exc.value)


# --------------------------------------------------------------------------- unsafe XML


def test_entities_in_a_philips_document_are_refused(examples, tmp_path, cli):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    text = _text(examples / EXAMPLES["2020-5-18_15-48-11"][0], "utf-16")
    body = text[text.index("<restingecgdata"):]
    xxe = ('<?xml version="1.0" encoding="utf-16"?>\n'
           f'<!DOCTYPE restingecgdata [<!ENTITY x SYSTEM "file://{secret}">]>\n'
           + body.replace("<documenttype>PhilipsECG", "<documenttype>&x;PhilipsECG", 1))
    (tmp_path / "xxe.xml").write_text(xxe, encoding="utf-16")
    bomb = ('<?xml version="1.0"?>\n<!DOCTYPE restingecgdata [<!ENTITY a "aaaaaaaaaa">'
            '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>\n'
            + body.replace("<documentname>", "<documentname>&c;", 1))
    (tmp_path / "bomb.xml").write_text(bomb)
    for name in ("xxe.xml", "bomb.xml"):
        assert reader_for(tmp_path / name).__name__ == "read_philips"
    res = cli(["convert", tmp_path / "xxe.xml", tmp_path / "bomb.xml", "-o", tmp_path / "x.parquet"])
    assert res.exit_code == 1  # both refused: nothing to write
    lines = [line for line in res.stderr.splitlines() if "refused unsafe XML" in line]
    assert len(lines) == 2 and "xxe" in lines[0] and "bomb" in lines[1]
    assert "nothing written" in res.stderr and not (tmp_path / "x.parquet").exists()
    assert "TOP-SECRET" not in res.stderr + res.stdout
    # the decoding library parses with defusedxml as well
    from defusedxml import DefusedXmlException

    for name in ("xxe.xml", "bomb.xml"):
        with pytest.raises(DefusedXmlException):
            sierraecg.read_file(str(tmp_path / name))
