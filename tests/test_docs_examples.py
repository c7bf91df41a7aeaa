"""The examples of docs/labels.md, docs/training.md, docs/preprocessing.md, docs/format.md and the README's
pipeline, run exactly as written; what the docs show of their output is what they print.

Each document runs in its own folder, with ``../shared`` beside it as the documents assume: a stand-in tree
that links the real ../shared/data folders (PTB-XL with 8 of its 500 Hz records, so that converting
"records500" stays quick). The folder holds the files a document names without making them (ptbxl.parquet
for training.md: a PTB-XL cohort in which every superclass has positives in folds 1-8, 9 and 10). A block of
commands runs with ``bash -euo pipefail``; a Python block with this interpreter; ``srun`` is stood in for
by a script that starts the tasks on this machine with the variables srun sets. A block that shows output
or a file layout is not run, nor are the README's set-up lines (they install packages and run the whole
suite); labels.md's vocabulary file is written as my.json and read by ``--vocab``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cli_examples import (
    ROOT,
    bin_env,
    code_blocks,
    ptbxl_cohort,
    run_sh,
    write_launchers,
)

DOCS = ("labels.md", "training.md", "preprocessing.md", "format.md", "README.md")
COMMAND_WORDS = ("ecgtool", "python", "torchrun", "srun")
# a whole command shown inline in the prose (no placeholder in capitals)
INLINE = re.compile(r"`(ecgtool [a-z][^`]*?)`")
SHOWN_JSON = {"format.md"}  # the table metadata of format.md is an illustration, not a file to read


def _path(doc: str) -> Path:
    return ROOT / doc if doc == "README.md" else ROOT / "docs" / doc


def _is_commands(body: str) -> bool:
    lines = [ln for ln in body.splitlines() if ln.strip()]
    firsts = [ln for i, ln in enumerate(lines) if i == 0 or not lines[i - 1].rstrip().endswith("\\")]
    return bool(firsts) and all(ln.split()[0] in COMMAND_WORDS for ln in firsts)


def steps(doc: str) -> list[tuple[str, str]]:
    """What a document asks to run, in its order: ('sh', commands), ('python', code), ('file NAME', text)."""
    out = []
    for lang, body in code_blocks(_path(doc)):
        if lang == "python":
            out.append(("python", body))
        elif lang == "json" and doc not in SHOWN_JSON:
            out.append(("file my.json", body))
            out.append(("sh", "ecgtool label ptbxl.parquet --vocab my.json -o my.parquet\n"))
        elif lang in ("", "sh", "bash") and _is_commands(body):
            out.append(("sh", body))
    prose = re.sub(r"```.*?```", "", _path(doc).read_text(encoding="utf-8"), flags=re.S)
    for cmd in INLINE.findall(prose) if doc != "README.md" else []:
        if not re.search(r"\b[A-Z]{3,}\b", cmd) and len(cmd.split()) > 2:
            out.append(("sh", cmd + "\n"))
    return out


STEPS = [(doc, k) for doc in DOCS for k in range(len(steps(doc)))]


def _cohort_ids(data_dir: Path, tmp: Path) -> list[int]:
    import pyarrow.parquet as pq

    r = subprocess.run([sys.executable, "-m", "ecgtool", "-q", "label", data_dir / "ptbxl-500/ptbxl_database.csv",
                        "--id-column", "ecg_id", "--scp-column", "scp_codes", "--split-column", "strat_fold", "-o",
                        tmp / "all.parquet"], capture_output=True, text=True, env=bin_env(), check=False)
    assert r.returncode == 0, r.stderr
    return ptbxl_cohort(pq.read_table(tmp / "all.parquet").to_pylist(), {"train": 4, "val": 2, "test": 2})


def _stand_ins(top: Path, data_dir: Path) -> None:
    import ecgtool
    from ecgtool.models.checkpoint import save_checkpoint

    ptb = data_dir / "ptbxl-500"
    shared = top / "shared" / "data"
    for name in ("cinc2017", "cinc2021-sample", "ludb", "formats", "formats2", "wfdb-samples", "cpsc2021-sample"):
        if (data_dir / name).exists():
            (shared / name).parent.mkdir(parents=True, exist_ok=True)
            (shared / name).symlink_to(data_dir / name)
    for name in ("ptbxl_database.csv", "scp_statements.csv", "LICENSE.txt"):
        (shared / "ptbxl-500").mkdir(parents=True, exist_ok=True)
        (shared / "ptbxl-500" / name).symlink_to(ptb / name)
    for i in range(1, 9):
        for ext in ("hea", "dat"):
            for rate, sfx in (("500", "hr"), ("100", "lr")):
                dest = shared / f"ptbxl-500/records{rate}/00000/{i:05d}_{sfx}.{ext}"
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.symlink_to(ptb / f"records{rate}/00000/{i:05d}_{sfx}.{ext}")
    for doc in DOCS:
        (top / doc.removesuffix(".md")).mkdir()

    def ecg(doc, *args):
        r = subprocess.run([sys.executable, "-m", "ecgtool", "-q", *map(str, args)], cwd=top / doc, text=True,
                           capture_output=True, env=bin_env(), check=False)
        assert r.returncode == 0, f"{args}\n{r.stderr[-2000:]}"

    ids = _cohort_ids(data_dir, top)
    jobs = [("labels", "convert", *[data_dir / f"cinc2017/A0000{i}.hea" for i in range(1, 6)], "-o", "ids.parquet"),
            ("training", "convert", *[ptb / f"records100/00000/{i:05d}_lr.hea" for i in ids], "--join",
             ptb / "ptbxl_database.csv", "-o", "ptbxl.parquet"),
            ("preprocessing", "convert", *[ptb / f"records100/00000/{i:05d}_lr.hea" for i in range(1, 4)], "-o",
             "records.parquet"),
            ("format", "convert", ptb / "records500/00000/00001_hr.hea", "-o", "rec.parquet")]
    with ThreadPoolExecutor(2) as pool:
        for f in [pool.submit(ecg, *j) for j in jobs]:
            f.result()
    ecg("format", "preprocess", "--preset", "ecg-fm", "rec.parquet", "-o", "seg.parquet")
    for folder, rel in (("preprocessing", "ptbxl/records500/00000"), ("README", "data/ptbxl/records500/00000")):
        for i in range(1, 4):
            for ext in ("hea", "dat"):
                dest = top / folder / rel / f"{i:05d}_hr.{ext}"
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.symlink_to(ptb / f"records500/00000/{i:05d}_hr.{ext}")
    save_checkpoint(ecgtool.create_model("ecgfm-tiny"), top / "README" / "ecgfm.safetensors")
    write_launchers(top / "bin")


class Docs:
    """Each document's steps in order in its folder, two documents at a time."""

    def __init__(self, top: Path, wanted: list[str]):
        self.top = top
        self.env = bin_env()
        self.env["PATH"] = f"{top / 'bin'}{os.pathsep}{self.env['PATH']}"
        self.pool = ThreadPoolExecutor(2)
        order = sorted(wanted, key=lambda d: d != "training.md")  # the longest first
        self.futures = {doc: self.pool.submit(self._run, doc) for doc in order}

    def folder(self, doc: str) -> Path:
        return self.top / doc.removesuffix(".md")

    def _run(self, doc: str) -> list[subprocess.CompletedProcess]:
        out = []
        for kind, body in steps(doc):
            if kind.startswith("file "):
                (self.folder(doc) / kind.split()[1]).write_text(body, encoding="utf-8")
                out.append(subprocess.CompletedProcess(kind, 0, b"", b""))
            elif kind == "python":
                out.append(subprocess.run([sys.executable, "-c", body], cwd=self.folder(doc), capture_output=True,
                                          env=self.env, timeout=300, check=False))
            else:
                out.append(run_sh(body, self.folder(doc), self.env))
            if out[-1].returncode != 0:
                break
        return out

    def result(self, doc: str, k: int) -> subprocess.CompletedProcess:
        results = self.futures[doc].result()
        if k >= len(results):
            pytest.fail(f"an earlier example of {doc} failed: {steps(doc)[len(results) - 1][1]}")
        return results[k]

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module")
def docs(request, tmp_path_factory, data_dir):
    top = tmp_path_factory.mktemp("docs-examples")
    _stand_ins(top, data_dir)
    wanted = []
    for item in request.session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if item.module is not sys.modules[__name__]:
            continue
        doc = params.get("doc", "labels.md" if item.originalname == "test_what_labels_md_shows_is_printed" else None)
        if doc and doc not in wanted:
            wanted.append(doc)
    d = Docs(top, wanted)
    yield d
    d.close()


def test_the_docs_have_their_examples():
    count = {doc: sum(kind == "sh" for kind, _ in steps(doc)) for doc in DOCS}
    assert count == {"labels.md": 5, "training.md": 3, "preprocessing.md": 1, "format.md": 2, "README.md": 1}, count
    assert sum(kind == "python" for kind, _ in steps("format.md")) == 1
    # the blocks left out show output or a layout
    shown = [body for lang, body in code_blocks(_path("training.md")) if lang == "" and not _is_commands(body)]
    assert len(shown) == 1 and shown[0].startswith("RUN/")
    setup = [body for lang, body in code_blocks(_path("README.md")) if lang == "sh" and not _is_commands(body)]
    assert len(setup) == 2 and all(body.startswith("pip install ") for body in setup)


@pytest.mark.parametrize("doc,k", STEPS, ids=[f"{d}:{k}:{steps(d)[k][1].splitlines()[0][:60]}" for d, k in STEPS])
def test_doc_example_runs(doc, k, docs):
    r = docs.result(doc, k)
    assert r.returncode == 0, f"{steps(doc)[k][1]}\n{r.stderr.decode(errors='replace')[-3000:]}"


def test_what_labels_md_shows_is_printed(docs):
    """The vocabulary table is what --list-vocabs lists; the LUDB agreement table is what the module prints."""
    text = _path("labels.md").read_text(encoding="utf-8")
    all_steps = steps("labels.md")
    printed = {body.strip(): docs.result("labels.md", k).stdout.decode() for k, (_, body) in enumerate(all_steps)}
    listing = printed["ecgtool label --list-vocabs"]
    vocabs = dict(line.split("\t")[:2] for line in listing.splitlines())
    section = text.split("`ecgtool label --list-vocabs`:", 1)[1].split("\n\n", 2)[1]
    for row in section.splitlines()[2:]:
        names, n = row.split("|")[1].strip(), row.split("|")[2].strip()
        first = re.findall(r"`([\w-]+)`", names)
        counts = n.split(" / ")
        prefix = first[0].rsplit("-", 1)[0] + "-" if len(first) > 1 else ""
        for name, count in zip([first[0]] + [prefix + x.strip("-") for x in first[1:]], counts):
            assert vocabs.get(name) == f"{count} labels", (name, count, listing)
    ludb = next(out for cmd, out in printed.items() if cmd.startswith("python -m ecgtool.labels.ludb"))
    table = [ln for ln in text.split("Measured on 200 records", 1)[1].splitlines() if ln.startswith("|")]
    assert len(table) > 50
    printed_lines = set(ludb.splitlines())
    for row in table:
        assert row in printed_lines, f"not printed: {row}"
