"""docs/probe.md's examples run exactly as written, and the numbers it shows are the ones they print (the
--help examples of probe, compare, embed and predict run in tests/test_help_examples.py).

The doc's commands run in a folder laid out like the repository root: ``../shared`` beside it (a link to the
real one) and ``examples/`` (a link to the repository's). A number shown in the doc must equal the printed
one to within one unit of its last digit (other machines round a few last digits differently)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, SHARED

DOC = ROOT / "docs" / "probe.md"
NUM = re.compile(r"[-+]?\d+\.\d+|[-+]?\d+")


def sections() -> list[tuple[str, list[str]]]:
    """(shell block, [text blocks shown after it]) in the order of the doc."""
    out: list[tuple[str, list[str]]] = []
    for lang, body in re.findall(r"```(sh|text)\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S):
        if lang == "sh":
            out.append((body, []))
        elif out:
            out[-1][1].append(body)
    return out


def _env() -> dict:
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                COLUMNS="200")


def _skeleton(line: str) -> tuple[str, list[str]]:
    return re.sub(r"\s+", " ", NUM.sub("#", line)).strip(), NUM.findall(line)


def _matches(shown: str, printed: str) -> bool:
    sk_a, na = _skeleton(shown)
    sk_b, nb = _skeleton(printed)
    if sk_a != sk_b or len(na) != len(nb):
        return False
    for a, b in zip(na, nb):
        decimals = len(a.split(".")[1]) if "." in a else 0
        if abs(float(a) - float(b)) > 1.01 * 10 ** (-decimals):
            return False
    return True


@pytest.fixture(scope="module")
def ran(tmp_path_factory, data_dir):
    base = tmp_path_factory.mktemp("docs-probe")
    (base / "shared").symlink_to(SHARED.resolve())
    work = base / "work"
    work.mkdir()
    (work / "examples").symlink_to(ROOT / "examples")
    results = []
    for script, _ in sections():
        r = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=work, capture_output=True, text=True,
                           env=_env())
        results.append(r)
        if r.returncode != 0:
            break
    return work, results


def test_the_doc_has_its_examples():
    s = sections()
    assert len(s) >= 6 and all(texts for _, texts in s)
    text = "".join(b for b, _ in s)
    for flag in ("--baseline random", "--head attention", "--head knn", "ecgtool compare", "--alpha 0.1"):
        assert flag in text


@pytest.mark.parametrize("k", range(len(sections())))
def test_example_runs_and_prints_what_the_doc_shows(k, ran):
    work, results = ran
    assert k < len(results), "an earlier example failed"
    r = results[k]
    script, texts = sections()[k]
    assert r.returncode == 0, f"{script}\n{r.stderr[-3000:]}"
    printed = [ln for ln in r.stdout.splitlines() if ln.strip()]
    for block in texts:
        for line in block.splitlines():
            if line.strip():
                assert any(_matches(line, p) for p in printed), f"not printed: {line!r}\n---\n{r.stdout[-4000:]}"


def test_the_doc_claims_hold(ran):
    """What the prose says about the outputs."""
    work, results = ran
    assert all(r.returncode == 0 for r in results) and len(results) == len(sections())
    probe = json.loads((work / "probe.json").read_text())
    cmp = json.loads((work / "compare.json").read_text())
    # each model's AUROC in the comparison equals its own report (the probe's; the model card's for the model)
    m_pred, m_probe = cmp["models"]
    for name in probe["labels"]:
        assert m_probe["per_label"][name]["auroc"]["value"] == probe["metrics"]["per_label"][name]["auroc"]["value"]
    card = (ROOT / "docs" / "default-model.md").read_text()
    assert f"**{m_pred['macro']['auroc']['value']:.3f} (" in card
    shown = dict(re.findall(r"^\| PTB-XL fold 10 \| (\w+) \| (\d\.\d+) \(", card, flags=re.M))
    assert set(shown) == {"NORM", "MI", "STTC", "CD", "HYP"}
    for name, v in shown.items():
        assert m_pred["per_label"][name]["auroc"]["value"] == pytest.approx(float(v), abs=0.0006)
    assert "possible leakage" in results[0].stderr and "PTB-XL" in results[0].stderr
    assert probe["conformal"]["calibration"]["HYP"]["t_pos"] is None and probe["conformal"]["calibration"]["HYP"][
        "n_pos"] == 8
    base = json.loads((work / "probe.baseline.json").read_text())["baseline"]
    assert base["reference"] == "ecgtool-default (random init, seed 0) linear probe"
    d = base["differences"][0]["macro"]["auroc"]
    assert d["ci"][0] < 0 < d["ci"][1]
    cinc = json.loads((work / "cinc.probe.json").read_text())
    cov = cinc["conformal"]["test"]["coverage"]
    assert 0.87 <= cov["value"] <= 0.93 and cov["ci"][0] <= cov["value"] <= cov["ci"][1]
    per = cinc["conformal"]["test"]["coverage_per_class"]
    assert round(per["N"], 2) == 0.98 and round(per["A"], 2) == 0.74 and round(per["O"], 2) == 0.80
    assert round(per["~"], 2) == 0.50
    for f in ("figs/risk_coverage.png", "figs/scaling.png", "forest.png", "heads.png", "cinc-figs/risk_coverage.png"):
        assert (work / f).read_bytes()[:4] == b"\x89PNG", f
