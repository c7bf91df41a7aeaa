"""embed and predict end to end: real records, released-layout checkpoints, adaptation, bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ecgtool.io import TableMeta, TableWriter, batch_signal_array, open_table, records_batch

PTBXL_IDS = ("00001", "00009", "00017")


class _Res:
    def __init__(self, r):
        self.returncode = r.exit_code
        self.stderr = r.stderr.encode()
        self.stdout = r.stdout_bytes


def run(*args):
    """The CLI in-process (as the shell would call it, without the interpreter start-up)."""
    from typer.testing import CliRunner

    from ecgtool.cli import app

    return _Res(CliRunner().invoke(app, [str(a) for a in args]))


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, reference_dir):
    out = tmp_path_factory.mktemp("ckpt")
    fx = reference_dir / "fixtures"
    paths = {}
    for name, src in (("fm", fx / "ecgfm" / "pretrained.pt"), ("fmft", fx / "ecgfm" / "finetuned.pt"),
                      ("founder", fx / "ecgfounder" / "12_lead_reduced.pth"),
                      ("founder1", fx / "ecgfounder" / "1_lead_reduced.pth")):
        paths[name] = out / f"{name}.safetensors"
        res = run("models", "import", src, "-o", paths[name])
        assert res.returncode == 0, res.stderr.decode()
    return paths


@pytest.fixture(scope="module")
def ptbxl3(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("tables")
    heas = [data_dir / "ptbxl-500" / "records500" / "00000" / f"{i}_hr.hea" for i in PTBXL_IDS]
    rec = out / "rec.parquet"
    seg = out / "seg.parquet"
    assert run("convert", *heas, "-o", rec).returncode == 0
    res = run("preprocess", "--preset", "ecg-fm", rec, "-o", seg)
    assert res.returncode == 0, res.stderr.decode()
    return rec, seg


def _emb(path):
    t = pq.read_table(path)
    return t, np.stack(t.column("embedding").to_numpy(zero_copy_only=False))


def test_embed_reproduces_reference_pooled(ckpts, ptbxl3, reference_dir, tmp_path):
    """convert | preprocess --preset ecg-fm | embed equals the original code's pooled output."""
    _, seg = ptbxl3
    out = tmp_path / "e.parquet"
    res = run("embed", "-m", ckpts["fm"], seg, "--pool", "none", "--precision", "fp32", "-o", out)
    assert res.returncode == 0, res.stderr.decode()
    t, e = _emb(out)
    assert t.column("segment").to_pylist() == [0, 1, 0, 1, 0, 1]
    ref = np.load(reference_dir / "fixtures" / "ecgfm" / "io.npz")
    # io.npz: ecg_id 1 seg 0, id 9 seg 1, id 17 seg 0
    np.testing.assert_allclose(e[[0, 3, 4]], ref["pooled"], atol=1e-5)


def test_mean_pool_is_mean_of_windows_and_raw_input_is_adapted(ckpts, ptbxl3, tmp_path):
    rec, seg = ptbxl3
    per = tmp_path / "per.parquet"
    pooled = tmp_path / "pooled.parquet"
    raw = tmp_path / "raw.parquet"
    assert run("embed", "-m", ckpts["fm"], seg, "--pool", "none", "-o", per).returncode == 0
    assert run("embed", "-m", ckpts["fm"], seg, "-o", pooled, "--batch-size", "1").returncode == 0
    res = run("embed", "-m", ckpts["fm"], rec, "-o", raw)
    assert res.returncode == 0 and b"preset 'ecg-fm'" in res.stderr
    _, e_per = _emb(per)
    tp, e_pool = _emb(pooled)
    _, e_raw = _emb(raw)
    assert tp.column("record_id").to_pylist() == [f"{i}_hr" for i in PTBXL_IDS]
    assert "segment" not in tp.column_names
    np.testing.assert_allclose(e_pool, e_per.reshape(3, 2, -1).mean(1), atol=1e-6)
    np.testing.assert_allclose(e_raw, e_pool, atol=1e-5)


def test_local_features_and_layer(ckpts, ptbxl3, tmp_path):
    _, seg = ptbxl3
    out = tmp_path / "loc.parquet"
    assert run("embed", "-m", ckpts["fm"], seg, "--local", "--layer", "0", "-o", out).returncode == 0
    t = pq.read_table(out)
    frames = t.column("local")[0].as_py()
    assert len(frames) == 2 * 156 and len(frames[0]) == 64  # two 5 s windows of 156 frames


def test_ecgfounder_stage_features_and_bad_layer(ckpts, data_dir, tmp_path):
    """--layer on ECGFounder takes a stage's output, pooled; a layer past the last stage is a usage error."""
    import torch

    from ecgtool.models.checkpoint import load_model

    rec, seg = tmp_path / "rec.parquet", tmp_path / "seg.parquet"
    heas = sorted((data_dir / "ptbxl-500" / "records500").rglob("*.hea"))[:2]
    assert run("convert", *heas, "-o", rec).returncode == 0
    assert run("preprocess", "--preset", "ecgfounder", rec, "-o", seg).returncode == 0
    out = tmp_path / "stage.parquet"
    res = run("embed", "-m", ckpts["founder"], seg, "--layer", "1", "--precision", "fp32", "-o", out)
    assert res.returncode == 0, res.stderr.decode()
    got = np.stack(pq.read_table(out).column("embedding").to_numpy(zero_copy_only=False))
    model = load_model(str(ckpts["founder"])).eval()
    with open_table(seg) as r:
        x = torch.from_numpy(np.concatenate([batch_signal_array(b) for b in r]))
    with torch.inference_mode():
        want = model.forward_intermediates(x)[2].mean(-1).numpy()  # [stem, stage 0, stage 1, ...]
    assert got.shape == want.shape == (2, model.feature_dim(1))
    np.testing.assert_allclose(got, want, atol=1e-5)
    n = len(model.stage_list)
    res = run("embed", "-m", ckpts["founder"], seg, "--layer", str(n), "-o", tmp_path / "bad.parquet")
    assert res.returncode == 2 and f"out of range for {n} layers" in res.stderr.decode()
    assert not (tmp_path / "bad.parquet").exists()


def test_ecgfounder_on_single_lead_300hz_records(ckpts, data_dir, tmp_path):
    """CinC 2017 (1 lead, 300 Hz, 9-61 s) through the 12-lead ECGFounder contract: resampled,
    zero-filled, cropped/padded to 10 s by its preset, one row per record."""
    heas = sorted((data_dir / "cinc2017").glob("A0000*.hea"))[:3]
    rec = tmp_path / "rec.parquet"
    assert run("convert", *heas, "-o", rec).returncode == 0
    # AliveCor's single lead is named 'ECG' in the headers; it is lead I
    t = pq.read_table(rec)
    t = t.set_column(t.column_names.index("leads"), "leads", pa.array([["I"]] * t.num_rows))
    pq.write_table(t, rec)
    out = tmp_path / "e.parquet"
    res = run("embed", "-m", ckpts["founder"], rec, "-o", out)
    assert res.returncode == 0, res.stderr.decode()
    t, e = _emb(out)
    assert e.shape == (3, 48) and np.isfinite(e).all()
    assert b"zero-filled" in res.stderr


def test_predict_table_and_thresholds(ckpts, ptbxl3, tmp_path):
    rec, _ = ptbxl3
    out = tmp_path / "p.parquet"
    res = run("predict", "-m", ckpts["founder"], rec, "-o", out, "--aggregate", "max")
    assert res.returncode == 0, res.stderr.decode()
    t = pq.read_table(out)
    names = [f"label_{k}" for k in range(7)]  # the reduced fixture head has no names
    p = np.stack([t.column(n).to_numpy() for n in names], 1)
    assert p.shape == (3, 7) and ((p >= 0) & (p <= 1)).all()
    for row, found in zip(p, t.column("findings").to_pylist()):
        assert set(found) == {n for n, v in zip(names, row) if v >= 0.5}


def test_predict_one_record_summary(ckpts, data_dir):
    hea = data_dir / "ptbxl-500" / "records500" / "00000" / "00001_hr.hea"
    res = subprocess.run(["script", "-qec", f"{sys.executable} -m ecgtool predict -m {ckpts['fmft']} {hea}",
                          "/dev/null"], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "00001_hr" in res.stdout and "most probable" in res.stdout


def test_shards_partition_the_records(ckpts, ptbxl3, tmp_path):
    rec, _ = ptbxl3
    ids = []
    for k in (1, 2):
        res = run("embed", "-m", ckpts["fm"], rec, "--shard", f"{k}/2", "-o", tmp_path / "e.parquet")
        assert res.returncode == 0, res.stderr.decode()
        part = tmp_path / f"e.shard{k}of2.parquet"
        ids += pq.read_table(part).column("record_id").to_pylist()
    assert sorted(ids) == [f"{i}_hr" for i in PTBXL_IDS]


def test_nan_record_is_skipped_with_message(ckpts, tmp_path):
    rows = [{"record_id": f"r{i}", "fs": 500.0, "leads": ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2",
                                                            "V3", "V4", "V5", "V6"],
             "signal": np.random.default_rng(i).normal(size=(12, 2500)).astype(np.float32)} for i in range(3)]
    rows[1]["signal"][3, 100] = np.nan
    batch = records_batch(rows, fixed=True)
    src = tmp_path / "in.parquet"
    meta = TableMeta(kind="segments", info={"normalisation": "per-lead-zscore", "preprocess": {"preset": "test"}})
    with TableWriter(src, batch.schema, meta) as w:
        w.write(batch)
    res = run("embed", "-m", ckpts["fm"], src, "-o", tmp_path / "e.parquet")
    assert res.returncode == 3
    assert b"r1: NaN" in res.stderr
    assert pq.read_table(tmp_path / "e.parquet").column("record_id").to_pylist() == ["r0", "r2"]
    assert run("embed", "-m", ckpts["fm"], src, "-o", tmp_path / "f.parquet", "--on-error", "skip").returncode == 0


def test_bad_inputs(ckpts, ptbxl3, tmp_path):
    rec, seg = ptbxl3
    # a table without a signal column
    pq.write_table(pa.table({"record_id": ["a"], "x": [1]}), tmp_path / "nosig.parquet")
    res = run("embed", "-m", ckpts["fm"], tmp_path / "nosig.parquet", "-o", tmp_path / "o.parquet")
    assert res.returncode == 1 and b"signal" in res.stderr and b"Traceback" not in res.stderr
    assert not (tmp_path / "o.parquet").exists()
    # a table preprocessed for another model's normalisation
    founder_seg = tmp_path / "f.parquet"
    assert run("preprocess", "--preset", "ecgfounder", rec, "-o", founder_seg).returncode == 0
    res = run("embed", "-m", ckpts["fm"], founder_seg, "-o", tmp_path / "o.parquet")
    assert res.returncode == 2 and b"--preset ecg-fm" in res.stderr
    # zero records
    empty = tmp_path / "empty.parquet"
    t = pq.read_table(seg)
    pq.write_table(t.slice(0, 0), empty)
    res = run("embed", "-m", ckpts["fm"], empty, "-o", tmp_path / "z.parquet")
    assert res.returncode == 0 and pq.read_table(tmp_path / "z.parquet").num_rows == 0
    # a registry name carries no weights; a missing checkpoint; a file that is no checkpoint
    res = run("embed", "-m", "ecgfm-tiny", seg, "-o", tmp_path / "o.parquet")
    assert res.returncode == 1 and b"no trained weights" in res.stderr
    res = run("embed", "-m", tmp_path / "nope.safetensors", seg, "-o", tmp_path / "o.parquet")
    assert res.returncode == 1 and b"no such checkpoint" in res.stderr
    res = run("embed", "-m", seg, seg, "-o", tmp_path / "o.parquet")
    assert res.returncode == 1 and b"not a model checkpoint" in res.stderr
    # a wrong device
    res = run("embed", "-m", ckpts["fm"], seg, "--device", "cuda:7", "-o", tmp_path / "o.parquet")
    assert res.returncode == 2
    # predict with an encoder-only model
    res = run("predict", "-m", ckpts["fm"], seg, "-o", tmp_path / "p.parquet")
    assert res.returncode == 2 and b"no classifier head" in res.stderr


def test_zero_fill_warning_names_only_leads_the_model_reads(ckpts, data_dir, tmp_path):
    # a 12-lead table in which only lead I is real (CinC 2017 through the ecgfounder preset):
    # the 1-lead model reads lead I alone, so nothing it uses is zero-filled
    heas = sorted((data_dir / "cinc2017").glob("A0000*.hea"))[:2]
    rec, pre = tmp_path / "rec.parquet", tmp_path / "pre.parquet"
    assert run("convert", *heas, "-o", rec).returncode == 0
    res = run("preprocess", "--preset", "ecgfounder", "--rename", "ECG=I", rec, "-o", pre)
    assert res.returncode == 0, res.stderr.decode()
    assert pq.read_table(pre).column("lead_mask").to_pylist()[0] == [True] + [False] * 11
    one = run("embed", "-m", ckpts["founder1"], pre, "-o", tmp_path / "e1.parquet")
    assert one.returncode == 0, one.stderr.decode()
    assert b"zero-filled" not in one.stderr
    twelve = run("embed", "-m", ckpts["founder"], pre, "-o", tmp_path / "e12.parquet")
    assert twelve.returncode == 0, twelve.stderr.decode()
    assert b"leads II,III,aVR,aVL,aVF,V1,V2,V3,V4,V5,V6 are absent and zero-filled" in twelve.stderr


def test_raw_folder_input_counts_unreadable_records(ckpts, data_dir, tmp_path):
    # records that fail on the fly conversion follow --on-error like any other bad record
    import shutil

    src = data_dir / "wfdb-samples"
    folder = tmp_path / "mix"
    folder.mkdir()
    for name in ("100_3chan.hea", "100_3chan.dat", "1003.hea"):  # 1003.dat is not in wfdb-samples
        shutil.copy(src / name, folder / name)
    res = run("embed", "-m", ckpts["founder"], folder, "-o", tmp_path / "e.parquet")
    err = res.stderr.decode()
    assert res.returncode == 3, err
    assert "skipped 1003: file 1003.dat is missing" in err and "1 record skipped" in err
    assert pq.read_table(tmp_path / "e.parquet").column("record_id").to_pylist() == ["100_3chan"]
    res = run("predict", "-m", ckpts["founder"], folder, "--on-error", "fail", "-o", tmp_path / "p.parquet")
    assert res.returncode == 1 and "1003.dat is missing" in res.stderr.decode()
    assert not (tmp_path / "p.parquet").exists()
    res = run("embed", "-m", ckpts["founder"], folder, "--on-error", "skip", "-o", tmp_path / "s.parquet")
    assert res.returncode == 0, res.stderr.decode()


def test_windows_are_batched_across_input_batches():
    """Runner.stream gives each item the same outputs as running it alone, whatever the batch size."""
    import torch

    from ecgtool.models.inference import Runner

    calls = []

    def fn(x):
        calls.append(len(x))
        return x.sum(dim=(1, 2)), x[:, 0, :2] * 2

    fn.names = ["a", "b"]
    runner = Runner(torch.nn.Identity(), torch.device("cpu"), batch_size=4)
    rng = np.random.default_rng(0)
    items = [(k, rng.standard_normal((n, 2, 3)).astype(np.float32)) for k, n in enumerate([3, 5, 1, 7, 4, 2])]
    for prefetch in (0, 2):
        calls.clear()
        got = list(runner.stream(fn, iter(items), prefetch=prefetch))
        assert [k for k, _ in got] == [k for k, _ in items]
        for (k, x), (_, outs) in zip(items, got):
            np.testing.assert_allclose(outs[0], x.sum(axis=(1, 2)), rtol=1e-6)
            np.testing.assert_allclose(outs[1], x[:, 0, :2] * 2)
        assert calls == [4, 4, 4, 4, 4, 2]  # 22 windows: full batches, one short batch at the end


def test_reader_error_reaches_the_caller_and_no_output_is_left(ckpts, tmp_path):
    from ecgtool.errors import RecordErrors
    from ecgtool.io import open_table
    from ecgtool.models.apply import embed_table
    from ecgtool.models.checkpoint import load_model

    model = load_model(str(ckpts["fm"]))
    c = model.contract
    rows = [{"record_id": f"r{i}", "fs": c.fs, "leads": list(c.leads),
             "signal": np.zeros((len(c.leads), c.n_samples), np.float32)} for i in range(3)]
    batch = records_batch(rows, fixed=True)
    src = tmp_path / "seg.parquet"
    meta = TableMeta(kind="segments", info={"normalisation": c.normalisation, "preprocess": {"preset": c.preset}})
    with TableWriter(src, batch.schema, meta) as w:
        w.write(batch)

    def broken():
        with open_table(src, batch_size=1) as r:
            yield next(iter(r))
            raise OSError("disk went away")

    out = tmp_path / "emb.parquet"
    with open_table(src) as r, pytest.raises(OSError, match="disk went away"):
        embed_table(r, str(out), model, device=__import__("torch").device("cpu"), batch_size=2,
                    errors=RecordErrors(), batches=broken())
    assert not out.exists() and not list(tmp_path.glob("emb*"))


def test_bf16_embeddings_keep_cosine_to_fp32(tmp_path):
    """--precision auto picks bf16 where the CPU has it; bf16 embeddings of real records stay within
    cosine 0.999 of fp32 (the bundled model on the bundled PTB-XL records)."""
    import subprocess
    import sys

    import pyarrow.parquet as pq

    from ecgtool.models.devices import has_bf16

    import torch

    if not has_bf16(torch.device("cpu")):
        pytest.skip("this CPU has no native bf16 (AVX512-BF16 or AMX)")
    from conftest import ROOT

    rec = tmp_path / "rec.parquet"
    examples = ROOT / "ecgtool" / "data" / "examples" / "ptbxl"
    assert subprocess.run([sys.executable, "-m", "ecgtool", "-q", "convert", str(examples), "-o", str(rec)]).returncode == 0
    out = {}
    for prec in ("fp32", "bf16", "auto"):
        dest = tmp_path / f"{prec}.parquet"
        r = subprocess.run([sys.executable, "-m", "ecgtool", "embed", str(rec), "-o", str(dest), "--device", "cpu",
                            "--precision", prec], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        out[prec] = np.asarray(pq.read_table(dest).column("embedding").to_pylist(), dtype=np.float64)
        if prec == "auto":
            assert "precision bf16" in r.stderr
    a, b = out["fp32"], out["bf16"]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() >= 0.999, cos
    np.testing.assert_array_equal(out["auto"], out["bf16"])
