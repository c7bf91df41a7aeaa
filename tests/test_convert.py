"""ecgtool convert on real records: equality with wfdb, metadata, joins, bad input, exit codes, pipes."""

from __future__ import annotations

import csv
import datetime as dt
import os
import re
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ecgtool.io import read_table
from ecgtool.io.schema import row_leads
from ecgtool.signal.leads import STANDARD_12

wfdb = pytest.importorskip("wfdb")


def _p_signal(base, m2s=True) -> np.ndarray:
    """What the design promises: wfdb.rdrecord(...).p_signal as float32, leads × samples."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return wfdb.rdrecord(str(base)).p_signal.T.astype(np.float32)


def _convert(paths, dest, **kw):
    from ecgtool.convert import convert

    return convert([str(p) for p in paths], str(dest), argv=["test"], **kw)


def _rows(path) -> dict[str, dict]:
    table, _ = read_table(str(path))
    out = {}
    col = table.column("signal").combine_chunks()
    for i, row in enumerate(table.drop_columns(["signal"]).to_pylist()):
        leads = row_leads(col, i)
        row["signal"] = np.stack(leads) if len({len(x) for x in leads}) == 1 else leads
        out[row["record_id"]] = row
    return out


def _hea(base) -> str:
    return str(base) + ".hea"


# --------------------------------------------------------------------------- equality with wfdb


def test_fast_path_records_equal_wfdb(data_dir, tmp_path):
    """Format-16 records (PTB-XL .dat, CinC .mat with byte offset, LUDB, CPSC with baselines) read by numpy."""
    bases = [
        data_dir / "ptbxl-500/records500/00000/00001_hr",
        data_dir / "ptbxl-500/records100/00000/00002_lr",
        data_dir / "cinc2017/A00001",
        data_dir / "cinc2021-sample/E07500",
        data_dir / "ludb/data/1",
        sorted((data_dir / "cpsc2021-sample").glob("*.hea"))[0].with_suffix(""),
    ]
    res = _convert([_hea(b) for b in bases], tmp_path / "x.parquet")
    assert res.rows == len(bases)
    rows = _rows(tmp_path / "x.parquet")
    for b in bases:
        row = rows[b.name]
        ref = _p_signal(b)
        assert row["signal"].dtype == np.float32
        np.testing.assert_array_equal(row["signal"], ref)
        assert row["fs"] == wfdb.rdheader(str(b)).fs
        assert row["source"] == _hea(b)


def test_fast_path_is_taken_and_agrees_with_wfdb_reading(data_dir, monkeypatch):
    """The numpy path is used for format 16 and gives the same floats as wfdb's own reading of that record."""
    from ecgtool.formats import wfdb as W

    hea = data_dir / "cinc2021-sample/E07500.hea"
    calls = []
    orig = W._wfdb_signal
    monkeypatch.setattr(W, "_wfdb_signal", lambda *a: calls.append(a) or orig(*a))
    fast = W.read_wfdb(str(hea))[0].signal
    assert calls == []
    monkeypatch.setattr(W, "_fast_signal", lambda *a: None)
    slow = W.read_wfdb(str(hea))[0].signal
    assert len(calls) == 1
    np.testing.assert_array_equal(fast, slow)


@pytest.mark.parametrize(
    "name",
    ["100", "binformats", "flacformats", "3000003_0003", "310derive", "311derive_2", "test01_00s_skew",
     "test01_00s_frame", "test01_00s_skewframe", "a103l", "s0010_re", "mixedsignals"],
)
def test_other_wfdb_layouts_equal_wfdb(data_dir, tmp_path, name):
    """Formats 8/16/24/32/61/80/160/212/310/311, FLAC 508/516/524, .mat, skew and frames."""
    base = data_dir / "wfdb-samples" / name
    _convert([_hea(base)], tmp_path / "x.parquet")
    row = _rows(tmp_path / "x.parquet")[name]
    ref = _p_signal(base)
    units = wfdb.rdheader(str(base)).units
    scale = np.array([1e-3 if u in ("uV", "µV") else 1.0 for u in units], dtype=np.float64)[:, None]
    if np.any(scale != 1):
        ref = (wfdb.rdrecord(str(base)).p_signal.T * scale).astype(np.float32)
        assert set(row["units"]) <= {"mV"} | set(units)
    np.testing.assert_array_equal(row["signal"], ref)


def test_multi_segment_record_is_one_row(data_dir, tmp_path):
    folder = data_dir / "wfdb-samples/multi-segment/041s"
    res = _convert([folder], tmp_path / "x.parquet")
    rows = _rows(tmp_path / "x.parquet")
    assert list(rows) == ["041s"]  # its segment headers are not records of their own
    np.testing.assert_array_equal(rows["041s"]["signal"], _p_signal(folder / "041s"))
    assert res.rows == 1


# --------------------------------------------------------------------------- leads and metadata


def test_lead_names_normalised_ptbxl_and_ludb(data_dir, tmp_path):
    ptb = data_dir / "ptbxl-500/records100/00000/00001_lr"
    ludb = data_dir / "ludb/data/2"
    assert "AVR" in wfdb.rdheader(str(ptb)).sig_name and "avr" in wfdb.rdheader(str(ludb)).sig_name
    _convert([_hea(ptb), _hea(ludb)], tmp_path / "x.parquet")
    rows = _rows(tmp_path / "x.parquet")
    assert rows["00001_lr"]["leads"] == list(STANDARD_12)
    assert rows["2"]["leads"] == list(STANDARD_12)


def test_mlii_becomes_ii(data_dir, tmp_path):
    _convert([data_dir / "wfdb-samples/100.hea"], tmp_path / "x.parquet")
    assert _rows(tmp_path / "x.parquet")["100"]["leads"] == ["II", "V5"]


def test_cinc2021_age_sex_dx(data_dir, tmp_path):
    heads = sorted((data_dir / "cinc2021-sample").glob("*.hea"))[:6]
    _convert(heads, tmp_path / "x.parquet")
    rows = _rows(tmp_path / "x.parquet")
    for h in heads:
        comments = dict(c.split(":", 1) for c in wfdb.rdheader(str(h.with_suffix(""))).comments if ":" in c)
        row = rows[h.stem]
        assert row["dx"] == [x.strip() for x in comments["Dx"].split(",")]
        age = comments["Age"].strip()
        assert row["age"] == (float(age) if age.replace(".", "").isdigit() else None)
        assert row["sex"] == {"Male": "M", "Female": "F"}.get(comments["Sex"].strip())


def test_ludb_diagnosis_age_sex(data_dir, tmp_path):
    base = data_dir / "ludb/data/1"
    _convert([_hea(base)], tmp_path / "x.parquet")
    row = _rows(tmp_path / "x.parquet")["1"]
    comments = wfdb.rdheader(str(base)).comments
    i = next(k for k, c in enumerate(comments) if c.startswith("<diagnoses>"))
    for line in comments[i + 1:]:
        assert line.strip() in row["diagnosis"]
    assert row["age"] == float(comments[0].split(":")[1]) and row["sex"] == comments[1].split(":")[1].strip()


# --------------------------------------------------------------------------- joins


def test_join_ptbxl_database(data_dir, tmp_path, cli):
    recs = sorted((data_dir / "ptbxl-500/records500/00000").glob("*.hea"))[:4]
    recs += sorted((data_dir / "ptbxl-500/records100/00000").glob("*.hea"))[:2]
    db = data_dir / "ptbxl-500/ptbxl_database.csv"
    res = cli(["convert", *recs, "--join", db, "-o", tmp_path / "x.parquet"])
    assert res.exit_code == 0, res.stderr
    assert "joined ptbxl_database.csv to 6 of 6 records" in res.stderr
    rows = _rows(tmp_path / "x.parquet")
    with open(db, newline="") as fh:
        by_id = {int(r["ecg_id"]): r for r in csv.DictReader(fh)}
    for h in recs:
        ecg_id = int(h.stem.split("_")[0])
        row, ref = rows[h.stem], by_id[ecg_id]
        assert row["ecg_id"] == ecg_id
        assert row["scp_codes"] == ref["scp_codes"]
        assert row["strat_fold"] == int(ref["strat_fold"])
        assert row["patient_id"] == str(int(float(ref["patient_id"])))
        assert row["sex"] == {"0": "M", "1": "F"}[ref["sex"]]  # PTB-XL's 0/1, as other databases code it
        assert row["age"] == float(ref["age"])


def test_join_cinc2017_reference_without_header(data_dir, tmp_path, cli):
    heads = sorted((data_dir / "cinc2017").glob("*.hea"))[:5]
    ref = data_dir / "cinc2017/REFERENCE.csv"
    res = cli(["convert", *heads, "--join", ref, "-o", tmp_path / "x.parquet"])
    assert res.exit_code == 0, res.stderr
    labels = dict(line.strip().split(",") for line in open(ref) if line.strip())
    rows = _rows(tmp_path / "x.parquet")
    for h in heads:
        assert rows[h.stem]["label"] == labels[h.stem]
    assert "joined REFERENCE.csv to 5 of 5 records" in res.stderr


def test_join_key_option_and_unmatched_rows(data_dir, tmp_path, cli):
    heads = sorted((data_dir / "cinc2017").glob("*.hea"))[:3]
    table = tmp_path / "labels.csv"
    table.write_text(f"name,rhythm\n{heads[0].stem},AF\nnot_a_record,N\n")
    res = cli(["convert", *heads, "--join", table, "--join-on", "name", "-o", tmp_path / "x.parquet"])
    assert res.exit_code == 0, res.stderr
    rows = _rows(tmp_path / "x.parquet")
    assert [rows[h.stem]["rhythm"] for h in heads] == ["AF", None, None]
    assert "joined labels.csv to 1 of 3 records" in res.stderr
    bad = cli(["convert", *heads, "--join", table, "--join-on", "nope", "-o", tmp_path / "y.parquet"])
    assert bad.exit_code == 2 and "nope" in bad.stderr


# --------------------------------------------------------------------------- inputs


def test_inputs_records_file_glob_stdin_and_unique_ids(data_dir, tmp_path, cli):
    (tmp_path / "RECORDS").write_text("a/00001_lr\nb/00001_lr\n")
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        for ext in (".hea", ".dat"):
            shutil.copy(data_dir / f"ptbxl-500/records100/00000/00001_lr{ext}", tmp_path / sub)
    res = cli(["convert", tmp_path / "RECORDS", "-o", tmp_path / "r.parquet"])
    assert res.exit_code == 0, res.stderr
    assert sorted(_rows(tmp_path / "r.parquet")) == ["a/00001_lr", "b/00001_lr"]
    res = cli(["convert", str(data_dir / "ludb/data") + "/1?.hea", "-o", tmp_path / "g.parquet"])
    assert res.exit_code == 0
    assert sorted(_rows(tmp_path / "g.parquet")) == [str(i) for i in range(10, 20)]
    listing = "\n".join(str(data_dir / f"cinc2017/{n}.hea") for n in ("A00001", "A00003")) + "\n"
    res = cli(["convert", "-", "-o", tmp_path / "s.parquet"], input=listing)
    assert res.exit_code == 0, res.stderr
    assert list(_rows(tmp_path / "s.parquet")) == ["A00001", "A00003"]


def test_workers_give_the_same_table(data_dir, tmp_path):
    heads = sorted((data_dir / "ptbxl-500/records100/00000").glob("*.hea"))[:20]
    _convert(heads, tmp_path / "one.parquet", workers=1, batch_size=3)
    _convert(heads, tmp_path / "two.parquet", workers=2, batch_size=3)
    a = pq.read_table(tmp_path / "one.parquet")
    b = pq.read_table(tmp_path / "two.parquet")
    assert a.column("record_id").to_pylist() == [h.stem for h in heads]
    assert a.equals(b)


def test_hl7_aecg_and_dicom(data_dir, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    aecg = data_dir / "formats/hl7-aecg/subject1_0.xml"
    dcm = data_dir / "formats/waveform_ecg.dcm"
    _convert([aecg, dcm], tmp_path / "x.parquet")
    rows = _rows(tmp_path / "x.parquet")
    a = rows["subject1_0"]
    assert a["fs"] == 500.0 and sorted(a["leads"]) == sorted(STANDARD_12)
    text = aecg.read_text()
    seq = text[text.index('code="MDC_ECG_LEAD_I"'):]
    scale = float(re.search(r'<scale value="([^"]+)" unit="uV"', seq).group(1))
    digits = np.array(re.search(r"<digits>(.*?)</digits>", seq, re.S).group(1).split(), dtype=np.float64)
    np.testing.assert_array_equal(a["signal"][a["leads"].index("I")], (digits * scale * 1e-3).astype(np.float32))
    start = re.search(r'<series>.*?<effectiveTime>\s*<low value="(\d{14})"', text, re.S).group(1)
    assert a["base_datetime"] == dt.datetime.strptime(start, "%Y%m%d%H%M%S")  # the series' start
    d = rows["waveform_ecg"]
    ds = pydicom.dcmread(str(dcm))
    ref = (ds.waveform_array(0).T * 1e-3).astype(np.float32)
    assert d["leads"] == list(STANDARD_12) and d["fs"] == float(ds.WaveformSequence[0].SamplingFrequency)
    np.testing.assert_array_equal(d["signal"], ref)


def test_npy_and_csv_need_fs(data_dir, tmp_path, cli):
    sig = _p_signal(data_dir / "ptbxl-500/records100/00000/00001_lr")[:3]
    np.save(tmp_path / "e.npy", sig)
    np.savetxt(tmp_path / "e.csv", sig.T, delimiter=",", header="I,II,III", comments="")
    res = cli(["convert", tmp_path / "e.npy", "-o", tmp_path / "x.parquet"])
    assert res.exit_code == 2 and "--fs" in res.stderr
    res = cli(["convert", tmp_path / "e.npy", tmp_path / "e.csv", "--fs", "100", "--leads", "I,II,III",
               "-o", tmp_path / "x.parquet"])
    assert res.exit_code == 0, res.stderr
    rows = _rows(tmp_path / "x.parquet")
    np.testing.assert_array_equal(rows["e"]["signal"] if "e" in rows else None, sig)
    assert rows["e"]["leads"] == ["I", "II", "III"] and rows["e"]["fs"] == 100.0


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def ptb(data_dir, tmp_path):
    """A fresh copy of one small PTB-XL record (100 Hz, 12 × 1000) in its own folder."""

    def make(name="rec", folder="bad"):
        d = tmp_path / folder
        d.mkdir(exist_ok=True)
        src = data_dir / "ptbxl-500/records100/00000/00001_lr"
        text = (src.with_suffix(".hea")).read_text().replace("00001_lr", name)
        (d / f"{name}.hea").write_text(text)
        shutil.copy(src.with_suffix(".dat"), d / f"{name}.dat")
        return d / name

    return make


def _run_bad(cli, tmp_path, *paths, extra=()):
    good = tmp_path / "good"
    if not good.exists():
        good.mkdir()
    out = tmp_path / "out.parquet"
    res = cli(["convert", *paths, *extra, "-o", out])
    return res, out


def test_missing_dat(ptb, tmp_path, data_dir, cli):
    rec = ptb("nodat")
    os.unlink(str(rec) + ".dat")
    good = data_dir / "cinc2017/A00001.hea"
    res, out = _run_bad(cli, tmp_path, _hea(rec), good)
    assert res.exit_code == 3
    err = [line for line in res.stderr.splitlines() if "error" in line and "nodat" in line]
    assert len(err) == 1 and "nodat.dat is missing" in err[0]
    assert list(_rows(out)) == ["A00001"]  # the other record went on


def test_truncated_dat_and_lying_header(ptb, tmp_path, cli):
    short = ptb("short")
    data = open(str(short) + ".dat", "rb").read()
    open(str(short) + ".dat", "wb").write(data[: len(data) // 2])
    lies = ptb("lies")
    text = open(_hea(lies)).read().splitlines()
    first = text[0].split()
    first[3] = str(int(first[3]) + 500)
    open(_hea(lies), "w").write("\n".join([" ".join(first)] + text[1:]) + "\n")
    fewer = ptb("fewer")
    text = open(_hea(fewer)).read().splitlines()
    first = text[0].split()
    first[3] = "600"
    open(_hea(fewer), "w").write("\n".join([" ".join(first)] + text[1:]) + "\n")
    res, out = _run_bad(cli, tmp_path, short.parent)
    assert res.exit_code == 3
    assert re.search(r"short: .*holds 500 samples per signal, the header says 1000", res.stderr)
    assert re.search(r"lies: .*holds 1000 samples per signal, the header says 1500", res.stderr)
    rows = _rows(out)
    assert list(rows) == ["fewer"]
    np.testing.assert_array_equal(rows["fewer"]["signal"], _p_signal(fewer))  # wfdb reads the first 600 too
    assert rows["fewer"]["signal"].shape == (12, 600)


def test_unknown_format_empty_files_non_utf8(ptb, tmp_path, cli):
    unk = ptb("unk")
    text = open(_hea(unk)).read()
    open(_hea(unk), "w").write(text.replace(" 16 1000.0", " 99 1000.0"))
    empty = ptb("empty")
    open(_hea(empty), "w").close()
    (unk.parent / "blank.xml").write_bytes(b"")
    latin = ptb("latin")
    with open(_hea(latin), "ab") as fh:
        fh.write("# Kommentar: Herzfrequenz gemessen (Ärztin)\n".encode("latin-1"))
    res, out = _run_bad(cli, tmp_path, unk.parent)
    assert res.exit_code == 3
    assert "unk: unknown WFDB storage format 99" in res.stderr, res.stderr
    assert "empty: empty header file" in res.stderr
    assert re.search(r"blank: not well-formed XML", res.stderr)
    assert "latin: header latin.hea is not UTF-8; read as Latin-1" in res.stderr
    rows = _rows(out)
    assert list(rows) == ["latin"]
    np.testing.assert_array_equal(rows["latin"]["signal"], _p_signal(ptb("ref", "ref")))


def test_nan_samples(ptb, tmp_path):
    rec = ptb("holes")
    d = np.fromfile(str(rec) + ".dat", dtype="<i2").reshape(-1, 12)
    d[10:20, 3] = -32768  # format 16's "no sample" value
    d.tofile(str(rec) + ".dat")
    _convert([_hea(rec)], tmp_path / "x.parquet")
    sig = _rows(tmp_path / "x.parquet")["holes"]["signal"]
    ref = _p_signal(rec)
    assert np.isnan(ref[3, 10:20]).all() and np.isnan(sig).sum() == 10
    np.testing.assert_array_equal(sig, ref)


def test_unknown_lead_name_is_kept_with_a_warning(ptb, tmp_path, cli):
    rec = ptb("oddlead")
    lines = open(_hea(rec)).read().splitlines()
    lines[5] = lines[5].rsplit(" ", 1)[0] + " Foo"
    open(_hea(rec), "w").write("\n".join(lines) + "\n")
    res, out = _run_bad(cli, tmp_path, _hea(rec))
    assert res.exit_code == 0
    assert "unknown lead names kept as they are: 'Foo' (record oddlead)" in res.stderr
    assert _rows(out)["oddlead"]["leads"][4] == "Foo"


def test_leads_of_different_lengths(data_dir, tmp_path):
    text = (data_dir / "formats/hl7-aecg/subject1_0.xml").read_text()
    i = text.index('code="MDC_ECG_LEAD_V1"')
    a, b = text.index("<digits>", i) + len("<digits>"), text.index("</digits>", i)
    digits = text[a:b].split()
    (tmp_path / "ragged.xml").write_text(text[:a] + " ".join(digits[:3000]) + text[b:])
    _convert([tmp_path / "ragged.xml"], tmp_path / "x.parquet")
    row = _rows(tmp_path / "x.parquet")["ragged"]
    lengths = dict(zip(row["leads"], (len(x) for x in row["signal"])))
    assert lengths["V1"] == 3000 and lengths["I"] == 5000


def test_cinc2017_date_wfdb_cannot_parse(data_dir, tmp_path):
    # The real CinC 2017 headers write dates as D/MM/YYYY ("1/05/2000"), which wfdb reads as
    # day/month; a month above 12 is where it gives up.
    src = data_dir / "cinc2017/A00001"
    assert str(wfdb.rdheader(str(src)).base_date) == "2000-05-01"
    text = _hea(src)
    bad = tmp_path / "A00001.hea"
    bad.write_text(open(text).read().replace("1/05/2000", "1/13/2000"))
    shutil.copy(str(src) + ".mat", tmp_path / "A00001.mat")
    with pytest.raises(ValueError):
        wfdb.rdheader(str(tmp_path / "A00001"))
    _convert([bad, _hea(src)], tmp_path / "x.parquet")
    rows = _rows(tmp_path / "x.parquet")
    assert list(rows) == ["A00001", "cinc2017/A00001"] or len(rows) == 2
    by_source = {r["source"]: r for r in rows.values()}
    assert by_source[str(bad)]["base_datetime"] is None
    assert str(by_source[_hea(src)]["base_datetime"]) == "2000-05-01 05:05:15"
    np.testing.assert_array_equal(by_source[str(bad)]["signal"], _p_signal(src))


def test_xml_entities_are_refused(tmp_path, cli):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    (tmp_path / "xxe.xml").write_text(
        f'<?xml version="1.0"?>\n<!DOCTYPE AnnotatedECG [<!ENTITY x SYSTEM "file://{secret}">]>\n'
        '<AnnotatedECG xmlns="urn:hl7-org:v3"><id>&x;</id></AnnotatedECG>\n'
    )
    (tmp_path / "bomb.xml").write_text(
        '<?xml version="1.0"?>\n<!DOCTYPE AnnotatedECG [<!ENTITY a "aaaaaaaaaa">'
        '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>\n'
        '<AnnotatedECG xmlns="urn:hl7-org:v3"><id>&c;</id></AnnotatedECG>\n'
    )
    res = cli(["convert", tmp_path / "xxe.xml", tmp_path / "bomb.xml", "-o", tmp_path / "x.parquet"])
    assert res.exit_code == 1  # both records refused: nothing to write
    lines = [line for line in res.stderr.splitlines() if "refused unsafe XML" in line]
    assert len(lines) == 2 and "xxe" in lines[0] and "bomb" in lines[1]
    assert "nothing written" in res.stderr and not (tmp_path / "x.parquet").exists()
    assert "TOP-SECRET" not in res.stderr + res.stdout


# --------------------------------------------------------------------------- exit codes, pipes, atomic output


def test_exit_codes_and_no_partial_output(ptb, tmp_path, cli, data_dir):
    bad = ptb("broken")
    os.unlink(str(bad) + ".dat")
    good = data_dir / "cinc2017/A00001.hea"
    out = tmp_path / "o.parquet"
    assert cli(["convert", good, "-o", out]).exit_code == 0
    out.unlink()
    assert cli(["convert", good, _hea(bad), "-o", out]).exit_code == 3 and out.exists()
    out.unlink()
    assert cli(["convert", good, _hea(bad), "--on-error", "skip", "-o", out]).exit_code == 0 and out.exists()
    out.unlink()
    res = cli(["convert", good, _hea(bad), "--on-error", "fail", "-o", out])
    assert res.exit_code == 1 and "broken" in res.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".o.parquet")]
    assert cli(["convert", good, "--on-error", "maybe", "-o", out]).exit_code == 2
    assert cli(["convert", tmp_path / "nothing-here", "-o", out]).exit_code == 1
    assert not out.exists()


def test_pipe_closed_early_ends_quietly(data_dir):
    folder = data_dir / "ptbxl-500/records100"
    cmd = f"{sys.executable} -m ecgtool convert -j 2 {folder} -o - | head -c 100 > /dev/null"
    res = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in res.stderr and "Error" not in res.stderr, res.stderr
    assert res.returncode in (0, 141)  # 141: SIGPIPE, what `cat` gives in the same place


def test_stdout_stream_reads_back(data_dir):
    heads = sorted((data_dir / "ludb/data").glob("*.hea"))[:3]
    res = subprocess.run([sys.executable, "-m", "ecgtool", "convert", *map(str, heads), "-o", "-"],
                         capture_output=True, timeout=120)
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout[:4] == b"\xff\xff\xff\xff"
    table = pa.ipc.open_stream(res.stdout).read_all()
    assert table.column("record_id").to_pylist() == [h.stem for h in heads]
