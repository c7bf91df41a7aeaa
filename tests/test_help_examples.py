"""Every example in every command's --help ("Examples:"), run exactly as written with ``bash -euo pipefail``.

The examples of one command run in order (a later one may continue an earlier one: --resume) in a folder
of their own, which holds stand-ins under the names the examples use: raw records linked from
../shared/data (PTB-XL, CinC 2017, LUDB, CinC 2021, HL7 aECG, GE MUSE), tables made from them (a PTB-XL
cohort with its labels, embeddings, predictions and probe reports; CinC 2017 rhythm classes), the reduced
reference checkpoints of ../shared/reference under the released names, and those checkpoints imported.
Where an example reads a table only to run a model over it, its folder holds a smaller table under the
same name (GROUP_FILES). ``sbatch`` (a test machine is no SLURM cluster) is stood in for by a script that
runs the array's tasks on this machine, with the variables SLURM sets. The examples of 'index' and 'search'
run in tests/test_retrieval.py, on its patient-history stand-ins. Two commands' examples run at a time.
"""

from __future__ import annotations

import csv
import os
import re
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cli_examples import (
    SUPERCLASSES,
    all_help_examples,
    bin_env,
    commands,
    help_examples,
    missing_tool,
    ptbxl_cohort,
    run_sh,
    write_launchers,
)

RUN_ELSEWHERE = {"index": "tests/test_retrieval.py", "search": "tests/test_retrieval.py"}
EXAMPLES = [(cmd, ex) for cmd, ex in all_help_examples() if cmd.split()[0] not in RUN_ELSEWHERE]

# name in a command's folder -> the smaller stand-in it gets there (made in spare/)
SMALL = {"rec.parquet": "rec8.parquet", "big.parquet": "rec8.parquet", "seg.parquet": "seg8.parquet"}
GROUP_FILES = {
    "pretrain": {"seg.parquet": "seg8.parquet"},
    "embed": SMALL,
    "predict": SMALL,
    "preprocess": {"rec.parquet": "rec8.parquet"},
    "saliency": {"rec.parquet": "rec1.parquet", "seg.parquet": "seg1.parquet"},
}
# what an example must print (stdout), beyond succeeding: the stand-ins are big enough for what it shows
PRINTS = {"--scaling 50,100,200": "Data scaling", "--subgroup sex": "Subgroups by sex",
          "--head attention": "Attention probe", "--cv 5 --report": "cv fold 1/5", "--multiclass": "cv fold 1/5"}
# tests that look at what a command's examples left behind
AFTER = {"test_pretrain_examples_resume_and_run_distributed": "pretrain"}
# the slowest first, so that two workers finish together
HEAVY_FIRST = ("finetune", "probe", "pretrain", "embed", "predict", "saliency", "models import", "models")


def _ecgtool(cwd: Path, *args) -> None:
    r = subprocess.run([sys.executable, "-m", "ecgtool", "-q", *map(str, args)], cwd=cwd, capture_output=True,
                       text=True, env=bin_env())
    assert r.returncode == 0, f"{args}\n{r.stderr[-3000:]}"


def _parallel(cwd: Path, *steps) -> None:
    """ecgtool commands that do not depend on each other, two at a time."""
    with ThreadPoolExecutor(2) as pool:
        for f in [pool.submit(_ecgtool, cwd, *s) for s in steps]:
            f.result()


def _link(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.symlink_to(src)


def _mimic17(src: Path, dest: Path) -> None:
    """The released ECG-FM classifier has 17 outputs, the reduced fixture 5: its head repeated to 17 rows."""
    import torch

    ck = torch.load(src, weights_only=False, map_location="cpu")
    idx = torch.arange(17) % 5
    for k in ("proj.weight", "proj.bias"):
        ck["model"][k] = ck["model"][k][idx].clone()
    ck["cfg"]["model"]["num_labels"] = 17
    torch.save(ck, dest)


def build_stand_ins(top: Path, data_dir: Path, reference_dir: Path) -> None:
    """top/base: what every command's folder starts from; top/spare: the smaller tables of GROUP_FILES;
    top/bin: the sbatch and srun stand-ins."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ecgtool.models.checkpoint import import_released
    from ecgtool.models.default import default_model_path

    d, spare = top / "base", top / "spare"
    d.mkdir()
    spare.mkdir()
    ptb, c17, fx = data_dir / "ptbxl-500", data_dir / "cinc2017", reference_dir / "fixtures"

    # raw records, laid out as the examples name them
    for i in range(1, 7):
        for ext in ("hea", "dat"):
            _link(ptb / f"records500/00000/{i:05d}_hr.{ext}", d / f"ptbxl/records500/00000/{i:05d}_hr.{ext}")
    _link(ptb / "ptbxl_database.csv", d / "ptbxl/ptbxl_database.csv")
    with open(c17 / "REFERENCE.csv", encoding="utf-8") as f:
        ref = {r[0]: r[1] for r in csv.reader(f)}
    cinc: list[str] = []
    for rec in sorted(p.stem for p in c17.glob("*.hea")):  # 10 records of each class (N, A, O, ~)
        if sum(ref[c] == ref[rec] for c in cinc) < 10:
            cinc.append(rec)
    cinc24 = [r for k, r in enumerate(cinc) if sum(ref[c] == ref[r] for c in cinc[:k]) < 6]  # 6 of each
    for rec in cinc:
        for ext in ("hea", "mat"):
            _link(c17 / f"{rec}.{ext}", d / f"cinc2017/{rec}.{ext}")
    (d / "cinc2017/RECORDS").write_text("".join(f"{r}\n" for r in cinc[:8]))
    _link(c17 / "REFERENCE.csv", d / "cinc2017/REFERENCE.csv")
    _link(c17 / "REFERENCE.csv", d / "REFERENCE.csv")
    for i in range(1, 5):
        for ext in ("hea", "dat"):
            _link(data_dir / f"ludb/data/{i}.{ext}", d / f"ludb/data/{i}.{ext}")
    for ext in ("hea", "dat"):  # data/: a mixed folder (WFDB, CinC 2021 .mat, HL7 aECG XML)
        _link(ptb / f"records500/00000/00001_hr.{ext}", d / f"data/ptbxl/records500/00000/00001_hr.{ext}")
    for rec in ("E07500", "E07501", "JS20004"):
        for ext in ("hea", "mat"):
            _link(data_dir / f"cinc2021-sample/{rec}.{ext}", d / f"data/cinc2021/{rec}.{ext}")
    for x in ("subject1_0.xml", "subject2_0.xml"):
        _link(data_dir / "formats/hl7-aecg" / x, d / "data/aecg" / x)
    for p in sorted((data_dir / "formats2/ge-muse-xml").glob("*.xml")):
        _link(p, d / "muse" / p.name)

    # released checkpoints: the reduced reference fixtures under the released names, and imported
    for name, rel in {"12_lead_ECGFounder.pth": "ecgfounder/12_lead_reduced.pth",
                      "ecgfounder.pth": "ecgfounder/12_lead_reduced.pth",
                      "mimic_iv_ecg_physionet_pretrained.pt": "ecgfm/pretrained.pt",
                      "my_finetuned.pt": "ecgfm/finetuned.pt"}.items():
        _link(fx / rel, d / name)
    _mimic17(fx / "ecgfm/finetuned.pt", d / "mimic_iv_ecg_finetuned.pt")
    import_released(d / "12_lead_ECGFounder.pth", d / "ecgfounder-12lead.safetensors")
    import_released(d / "mimic_iv_ecg_physionet_pretrained.pt", d / "ecgfm.safetensors")
    import_released(d / "my_finetuned.pt", d / "finetuned.safetensors", label_names=list(SUPERCLASSES))
    for name, target in {"ecgfounder.safetensors": "ecgfounder-12lead.safetensors",
                         "pretrained.safetensors": "ecgfm.safetensors",
                         "model.safetensors": "ecgfm.safetensors"}.items():
        os.link(d / target, d / name)
    for name in ("ft.safetensors", "m.safetensors"):  # the default model, whatever it is
        shutil.copyfile(default_model_path(), d / name)

    # PTB-XL cohorts (100 Hz) in which every superclass has positives in folds 1-8, 9 and 10
    _ecgtool(d, "label", ptb / "ptbxl_database.csv", "--id-column", "ecg_id", "--scp-column", "scp_codes",
             "--split-column", "strat_fold", "-o", spare / "all.labels.parquet")
    rows = pq.read_table(spare / "all.labels.parquet").to_pylist()
    big = ptbxl_cohort(rows, {"train": 16, "val": 5, "test": 5})
    small = ptbxl_cohort(rows, {"train": 4, "val": 2, "test": 2})

    def heas(ids):
        return [ptb / f"records100/00000/{i:05d}_lr.hea" for i in ids]

    db = ptb / "ptbxl_database.csv"
    _parallel(d, ["convert", *heas(big), "--join", db, "-o", "rec.parquet"],
              ["convert", *heas(small), "--join", db, "-o", spare / "small.parquet"],
              ["convert", *heas(big[:8]), "--join", db, "-o", spare / "rec8.parquet"],
              ["convert", *heas(big[:1]), "--join", db, "-o", spare / "rec1.parquet"],
              ["convert", *[c17 / f"{r}.hea" for r in cinc[:8]], "-o", "records.parquet"],
              ["convert", *[c17 / f"{r}.hea" for r in cinc], "--join", c17 / "REFERENCE.csv", "-o",
               "cinc2017.parquet"],
              ["convert", *[c17 / f"{r}.hea" for r in cinc24], "-o", spare / "cinc24.parquet"],
              ["convert", *[data_dir / f"ludb/data/{i}.hea" for i in range(1, 5)], "-o", "ludb.parquet"])
    pq.write_table(pa.table({"record_id": cinc, "label": [ref[r] for r in cinc]}), d / "rhythm.parquet")
    _parallel(d, ["embed", "rec.parquet", "--local", "-o", spare / "ptb.emb.parquet"],
              ["embed", spare / "cinc24.parquet", "--local", "-o", spare / "cinc.emb.parquet"],
              ["predict", "rec.parquet", "-o", "pred.parquet"],
              ["label", "rec.parquet", "--split-column", "strat_fold", "-o", "labels.parquet"],
              ["preprocess", "--preset", "ecg-fm", spare / "small.parquet", "-o", "seg.parquet"],
              ["preprocess", "--preset", "ecgfounder", spare / "small.parquet", "-o", "seg10.parquet"],
              ["preprocess", "--preset", "ecg-fm", spare / "rec8.parquet", "-o", spare / "seg8.parquet"],
              ["preprocess", "--preset", "ecg-fm", spare / "rec1.parquet", "-o", spare / "seg1.parquet"],
              ["preprocess", "--preset", "ecg-fm", "--rename", "ECG=I", "--length", "5", "cinc2017.parquet",
               "-o", "cinc.parquet"])
    for name in ("ptbxl.parquet", "big.parquet"):
        os.link(d / "rec.parquet", d / name)
    for name in ("superclass.parquet", "lab.parquet"):
        os.link(d / "labels.parquet", d / name)
    for name in ("a", "b", "c"):
        os.link(d / "pred.parquet", d / f"{name}.parquet")

    # one embedding table over both cohorts (per-frame features too), and a table of random features
    ptb_emb, cinc_emb = pq.read_table(spare / "ptb.emb.parquet"), pq.read_table(spare / "cinc.emb.parquet")
    both = pa.concat_tables([ptb_emb, cinc_emb.select([n for n in cinc_emb.column_names if n in ptb_emb.column_names])],
                            promote_options="default")
    pq.write_table(both.replace_schema_metadata(ptb_emb.schema.metadata), d / "emb.parquet")
    os.link(d / "emb.parquet", d / "emb.local.parquet")
    col = ptb_emb.column_names.index("embedding")
    noise = np.random.default_rng(0).standard_normal((ptb_emb.num_rows, len(ptb_emb.column(col)[0])))
    noise = pa.array(list(noise.astype(np.float32)), ptb_emb.schema.field(col).type)
    pq.write_table(ptb_emb.set_column(col, "embedding", noise), spare / "random.parquet")
    _parallel(d, ["probe", "emb.parquet", "-l", "labels.parquet", "--fold-column", "strat_fold", "--n-boot", "100",
                  "--report", "probe.json"],
              ["probe", spare / "random.parquet", "-l", "labels.parquet", "--fold-column", "strat_fold", "--n-boot",
               "100", "--report", "probe.random.json"])

    # a three-lead array (leads x samples, mV), as a user's own numpy export
    from ecgtool.formats import read_file

    rec = read_file(ptb / "records500/00000/00001_hr.hea")[0]
    np.save(d / "ecg.npy", np.asarray([rec.signal[rec.leads.index(n)] for n in ("I", "II", "III")], np.float32))

    write_launchers(top / "bin")


class Groups:
    """One folder per command (the stand-ins, as hard links), its examples run in order; two commands run
    at a time, started when the fixture is made (only those whose tests were selected)."""

    def __init__(self, top: Path, wanted: list[str]):
        self.top = top
        self.env = bin_env()
        self.env["PATH"] = f"{top / 'bin'}{os.pathsep}{self.env['PATH']}"
        self.pool = ThreadPoolExecutor(2)
        rank = {c: i for i, c in enumerate(HEAVY_FIRST)}
        self.futures = {c: self.pool.submit(self._run_all, c)
                        for c in sorted(wanted, key=lambda c: rank.get(c, len(rank)))}

    def folder(self, cmd: str) -> Path:
        return self.top / cmd.replace(" ", "-")

    def _run_all(self, cmd: str) -> list[subprocess.CompletedProcess]:
        folder = self.folder(cmd)
        shutil.copytree(self.top / "base", folder, symlinks=True, copy_function=os.link)
        for name, small in GROUP_FILES.get(cmd, {}).items():
            (folder / name).unlink()
            os.link(self.top / "spare" / small, folder / name)
        out: list = []
        for _, ex in [x for x in EXAMPLES if x[0] == cmd]:
            tool = missing_tool(ex, self.env)
            out.append(f"{tool} is not installed here" if tool else run_sh(ex, folder, self.env))
            if not tool and out[-1].returncode != 0:
                break
        return out

    def result(self, cmd: str, example: str) -> subprocess.CompletedProcess:
        todo = [e for c, e in EXAMPLES if c == cmd]
        results = self.futures[cmd].result()
        k = todo.index(example)
        if k >= len(results):
            pytest.fail(f"an earlier example of '{cmd}' failed: {todo[len(results) - 1]}")
        if isinstance(results[k], str):
            pytest.skip(results[k])
        return results[k]

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module")
def groups(request, tmp_path_factory, data_dir, reference_dir):
    top = tmp_path_factory.mktemp("help-examples")
    build_stand_ins(top, data_dir, reference_dir)
    wanted = []
    for item in request.session.items:
        if item.module is not sys.modules[__name__]:
            continue
        cmd = getattr(getattr(item, "callspec", None), "params", {}).get("cmd", AFTER.get(item.originalname))
        if cmd and cmd not in wanted:
            wanted.append(cmd)
    g = Groups(top, wanted)
    yield g
    g.close()


def _outputs(example: str) -> list[str]:
    """The files and folders an example names after -o / --output-dir / --report / --png / --figure(s)."""
    out = []
    for part in re.split(r"[|;]", example.replace("\\\n", " ")):
        words = shlex.split(part)
        for a, b in zip(words, words[1:]):
            if a in ("-o", "--output", "--output-dir", "--report", "--png", "--figure", "--figures") and b != "-":
                out.append(b)
    return out


def test_every_command_shows_examples():
    paths = commands()
    leaves = [p for p in paths if not any(len(q) > len(p) and q[:len(p)] == p for q in paths)]
    for path in leaves:
        assert help_examples(path), f"'ecgtool {' '.join(path)} --help' shows no examples"
    assert len(EXAMPLES) >= 45
    assert any("\\\n" in ex for _, ex in EXAMPLES)  # a continued line is read as one example
    assert {c.split()[0] for c, _ in all_help_examples()} - {c.split()[0] for c, _ in EXAMPLES} == set(RUN_ELSEWHERE)


@pytest.mark.parametrize("cmd,example", EXAMPLES, ids=[f"{c}:{e.split(chr(10))[0][:70]}" for c, e in EXAMPLES])
def test_help_example_runs(cmd, example, groups):
    r = groups.result(cmd, example)
    assert r.returncode == 0, f"{example}\n{r.stderr.decode(errors='replace')[-3000:]}"
    for flag, shown in PRINTS.items():
        if flag in example:
            assert shown in r.stdout.decode(errors="replace"), f"{example}: {shown!r} not printed"
    folder = groups.folder(cmd)
    for name in _outputs(example):
        p = folder / name
        array = re.search(r"--array=(\d+)-(\d+)", example)
        if array:  # each array task writes its own shard
            n = int(array.group(2)) - int(array.group(1)) + 1
            assert sorted(folder.glob(f"{p.stem}.shard*of{n}{p.suffix}")) == [
                folder / f"{p.stem}.shard{k}of{n}{p.suffix}" for k in range(1, n + 1)], name
        else:
            assert p.exists(), f"{example}: {name} was not written"


def test_pretrain_examples_resume_and_run_distributed(groups):
    """--resume went on from the first run's checkpoint; torchrun trained with two processes."""
    import json

    results = groups.futures["pretrain"].result()
    assert all(r.returncode == 0 for r in results) and len(results) == len([c for c, _ in EXAMPLES if c == "pretrain"])
    runs = groups.folder("pretrain") / "runs"
    log = [json.loads(line) for line in (runs / "pt/train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "loss" in e] == [1, 2, 3, 4]
    assert "2 process(es)" in results[-1].stderr.decode() and (runs / "ddp/model.safetensors").is_file()
