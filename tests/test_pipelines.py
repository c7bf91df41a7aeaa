"""Whole pipelines on slices of real data, as a user chains them:
convert -> preprocess -> embed / predict -> label -> probe, through real pipes where it matters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ecgtool.io import read_table
from ecgtool.signal.leads import STANDARD_12

ECGTOOL = f"{sys.executable} -m ecgtool"
SUPERCLASSES = ["NORM", "MI", "STTC", "CD", "HYP"]


def _sh(cmd: str, cwd: Path) -> subprocess.CompletedProcess:
    """A shell pipeline; the exit codes of every stage are printed last on stderr."""
    env = dict(os.environ, OMP_NUM_THREADS="1")  # the machine is shared: no spinning OpenMP threads
    script = f'set -o pipefail; {cmd}; echo "rc=${{PIPESTATUS[*]}}" >&2'
    return subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True, env=env)


def _codes(r: subprocess.CompletedProcess) -> list[int]:
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("rc="), r.stderr
    return [int(c) for c in last[3:].split()]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, reference_dir):
    """The reduced released-layout checkpoints, imported once (ECG-FM with superclass names)."""
    from ecgtool.models.checkpoint import import_released

    out = tmp_path_factory.mktemp("ckpt")
    fx = reference_dir / "fixtures"
    import_released(fx / "ecgfm" / "finetuned.pt", out / "fm.safetensors", label_names=SUPERCLASSES)
    import_released(fx / "ecgfounder" / "1_lead_reduced.pth", out / "f1.safetensors")
    return out


@pytest.fixture(scope="module")
def ptbxl(data_dir):
    root = data_dir / "ptbxl-500"
    return {"dir": root, "csv": root / "ptbxl_database.csv",
            "hea": sorted((root / "records500" / "00000").glob("*_hr.hea"))}


def test_convert_preprocess_embed_through_pipes(tmp_path, ckpts, ptbxl):
    """A real three-stage pipe: 2 segments per 10 s record, ids and metadata kept, one history."""
    heas = ptbxl["hea"][:5]
    ids = [h.stem for h in heas]
    files = " ".join(str(h) for h in heas)
    r = _sh(f"{ECGTOOL} convert {files} --join {ptbxl['csv']} -o - "
            f"| {ECGTOOL} preprocess --preset ecg-fm - -o - | tee seg.arrow "
            f"| {ECGTOOL} embed -m {ckpts / 'fm.safetensors'} - -o emb.parquet", tmp_path)
    assert _codes(r) == [0, 0, 0, 0], r.stderr
    assert "Traceback" not in r.stderr

    seg, smeta = read_table(tmp_path / "seg.arrow")
    assert smeta.kind == "segments" and seg.num_rows == 2 * len(ids)
    assert seg.column("record_id").to_pylist() == [i for i in ids for _ in range(2)]
    assert seg.column("segment").to_pylist() == [0, 1] * len(ids)
    assert all(leads == list(STANDARD_12) for leads in seg.column("leads").to_pylist())
    assert set(seg.column("fs").to_pylist()) == {500.0}
    x = np.asarray(seg.column("signal").combine_chunks().flatten().flatten()).reshape(-1, 12, 2500)
    # per-lead z-score over the whole 10 s record: the two halves together have mean 0, SD 1
    per_record = x.reshape(len(ids), 2, 12, 2500).transpose(0, 2, 1, 3).reshape(len(ids), 12, 5000)
    np.testing.assert_allclose(per_record.mean(-1), 0, atol=1e-4)
    np.testing.assert_allclose(per_record.std(-1), 1, atol=1e-3)

    emb, emeta = read_table(tmp_path / "emb.parquet")
    assert emeta.kind == "embeddings" and emb.num_rows == len(ids)
    assert emb.column("record_id").to_pylist() == ids
    assert emb.schema.field("embedding").type.list_size == 64
    e = np.asarray(emb.column("embedding").combine_chunks().flatten()).reshape(len(ids), 64)
    assert np.isfinite(e).all() and np.linalg.matrix_rank(e) == len(ids)  # distinct records, distinct vectors
    # PTB-XL metadata rides along from the --join of the first stage
    db = {f"{int(k):05d}_hr": v for k, v in _ptbxl_rows(ptbxl["csv"], ("strat_fold", "patient_id")).items()}
    assert emb.column("strat_fold").to_pylist() == [int(db[i]["strat_fold"]) for i in ids]
    steps = [h["command"] for h in emeta.history]
    assert len(steps) == 3 and steps[0].startswith("ecgtool convert ")
    assert steps[1].startswith("ecgtool preprocess --preset ecg-fm") and steps[2].startswith("ecgtool embed -m")


def _ptbxl_rows(csv_path: Path, cols: tuple[str, ...]) -> dict:
    import csv

    with open(csv_path, newline="") as fh:
        return {row["ecg_id"]: {c: row[c] for c in cols} for row in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def ptbxl_chain(tmp_path_factory, ckpts, ptbxl):
    """60 PTB-XL records at 100 Hz: records -> ecg-fm segments -> embeddings, predictions, labels."""
    from typer.testing import CliRunner

    from ecgtool.cli import app

    d = tmp_path_factory.mktemp("chain")
    heas = sorted((ptbxl["dir"] / "records100" / "00000").glob("*_lr.hea"))[:60]
    runner = CliRunner()

    def cli(*args):
        r = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        return r

    cli("convert", *heas, "--join", ptbxl["csv"], "-o", d / "rec.parquet")
    cli("preprocess", "--preset", "ecg-fm", d / "rec.parquet", "-o", d / "seg.parquet")
    cli("embed", "-m", ckpts / "fm.safetensors", d / "seg.parquet", "-o", d / "emb.parquet")
    cli("predict", "-m", ckpts / "fm.safetensors", d / "seg.parquet", "-o", d / "pred.parquet")
    r = cli("label", d / "seg.parquet", "--split-column", "strat_fold", "--report", d / "labrep.json",
            "-o", d / "lab.parquet")
    return {"dir": d, "ids": [h.stem for h in heas], "label_stderr": r.stderr, "cli": cli}


def test_segments_predictions_and_labels_line_up(ptbxl_chain):
    d, ids = ptbxl_chain["dir"], ptbxl_chain["ids"]
    seg, smeta = read_table(d / "seg.parquet")
    assert seg.num_rows == 2 * len(ids) and smeta.info["fs"] == 500.0  # 100 Hz records resampled
    assert smeta.info["n_samples"] == 2500

    pred, pmeta = read_table(d / "pred.parquet")
    assert pmeta.kind == "predictions" and pmeta.info["label_names"] == SUPERCLASSES
    assert pred.column("record_id").to_pylist() == ids  # segments aggregated back to records
    p = np.stack([pred.column(n).to_numpy() for n in SUPERCLASSES], axis=1)
    assert ((p >= 0) & (p <= 1)).all()
    thr = np.asarray(pmeta.info["thresholds"])
    for row, findings in zip(p, pred.column("findings").to_pylist()):
        assert set(findings) == {n for n, v, t in zip(SUPERCLASSES, row, thr) if v >= t}

    lab, lmeta = read_table(d / "lab.parquet")
    assert lmeta.kind == "labels" and lmeta.info["label_names"] == SUPERCLASSES
    assert lab.column("record_id").to_pylist() == ids  # one label row per record, not per segment
    rep = json.loads((d / "labrep.json").read_text())
    assert rep["records"] == len(ids) and rep["repeated_rows"] == len(ids)
    # labels agree with the SCP codes of ptbxl_database.csv for a record everyone knows: ecg 1 is NORM
    first = lab.slice(0, 1).to_pylist()[0]
    assert first["record_id"] == "00001_lr" and first["NORM"] == 1 and first["MI"] == 0
    norm = sum(v == 1 for v in lab.column("NORM").to_pylist())
    assert 0 < norm < len(ids)


def test_probe_joins_labels_and_embeddings(ptbxl_chain):
    d, ids, cli = ptbxl_chain["dir"], ptbxl_chain["ids"], ptbxl_chain["cli"]
    cli("probe", d / "emb.parquet", "-l", d / "lab.parquet", "--patient-column", "patient_id", "--cv", "3",
        "--label-names", "NORM,STTC", "--n-boot", "50", "--report", d / "probe.json", "--figures", d / "figs")
    rep = json.loads((d / "probe.json").read_text())
    rec = rep["records"]
    assert rec["records"] == len(ids) and rec["joined"] == len(ids)
    assert rec["embeddings_without_labels"] == 0 and rec["labels_without_embeddings"] == 0
    assert rep["embedding_dim"] == 64
    pngs = sorted(p.name for p in (d / "figs").glob("*.png"))
    assert "roc_all.png" in pngs and any(p.startswith("reliability") for p in pngs)
    for p in (d / "figs").glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_single_lead_cinc2017_into_the_one_lead_ecgfounder(tmp_path, ckpts, data_dir):
    """AliveCor lead I at 300 Hz, 9-61 s long -> 500 Hz, 10 s, lead I -> the 1-lead model."""
    root = data_dir / "cinc2017"
    names = ["A00001", "A00003", "A00005"]
    files = " ".join(str(root / f"{n}.hea") for n in names)
    r = _sh(f"{ECGTOOL} convert {files} --join {root / 'REFERENCE.csv'} -o - "
            f"| {ECGTOOL} preprocess --preset ecgfounder --rename ECG=I --leads I - -o - "
            f"| {ECGTOOL} predict -m {ckpts / 'f1.safetensors'} - -o pred.parquet", tmp_path)
    assert _codes(r) == [0, 0, 0], r.stderr
    pred, meta = read_table(tmp_path / "pred.parquet")
    assert pred.column("record_id").to_pylist() == names
    assert meta.info["contract"]["leads"] == ["I"] and meta.info["n_samples"] == 5000
    assert pred.column("label").to_pylist() == ["N", "N", "A"]  # REFERENCE.csv rode along
    assert "zero-filled" not in r.stderr  # lead I was there, under another name


def test_bad_records_are_reported_once_and_the_rest_flows(tmp_path, data_dir):
    root = data_dir / "wfdb-samples"
    good = ["100", "a103l"]
    missing = ["1003", "drive02"]  # their headers name a .dat that is not here
    files = " ".join(str(root / f"{n}.hea") for n in good + missing)
    r = _sh(f"{ECGTOOL} convert {files} -o - | {ECGTOOL} info --json - > info.json", tmp_path)
    assert _codes(r) == [3, 0], r.stderr
    assert "Traceback" not in r.stderr
    for name in missing:
        lines = [ln for ln in r.stderr.splitlines() if f"skipped {name}:" in ln]
        assert len(lines) == 1 and ".dat is missing" in lines[0]
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["rows"] == len(good)
    # asked to skip, the same run exits 0
    r = _sh(f"{ECGTOOL} convert {files} --on-error skip -o - | {ECGTOOL} info - > /dev/null", tmp_path)
    assert _codes(r) == [0, 0], r.stderr


def test_pipe_closed_early_ends_quietly(tmp_path, data_dir):
    r = _sh(f"{ECGTOOL} convert {data_dir / 'ludb' / 'data'} -o - | head -c 100 > /dev/null", tmp_path)
    assert _codes(r)[0] == 0, r.stderr
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr and "Exception" not in r.stderr


def test_info_text_into_head_exits_0(tmp_path, data_dir):
    # rich's console exits 1 on a closed stdout; `ecgtool info x | head -1` must end like cat does
    import pyarrow as pa

    from ecgtool.io import TableMeta, write_table

    meta = TableMeta(kind="records")
    for k in range(200):  # a long history: many lines still to print after head has gone
        meta.add_step(["ecgtool", "convert", f"part{k}"])
    write_table(tmp_path / "t.parquet", pa.table({"record_id": ["a"], "fs": [500.0]}), meta)
    for _ in range(3):
        r = _sh(f"{ECGTOOL} info t.parquet | head -1 > first.txt", tmp_path)
        assert _codes(r) == [0, 0], r.stderr
        assert (tmp_path / "first.txt").read_text().startswith("records table")
        assert "Traceback" not in r.stderr and "error" not in r.stderr
