"""Every registered variant behind the one model interface (as timm tests over list_models()).

Tiny variants are built and run for real; the others are built on the meta
device (shapes and parameter counts only). Each card's preset, applied to a raw
PTB-XL record, must give exactly the card's input contract.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ecgtool.models import list_models
from ecgtool.models.base import ATTENTION, EcgModel, parameter_count
from ecgtool.models.card import family_cards, model_cards, presets
from ecgtool.models.checkpoint import load_model
from ecgtool.models.native import save_checkpoint
from ecgtool.models.registry import create_model, model_card

ALL = list_models()
TINY = [n for n in ALL if model_card(n).tiny]


def test_every_family_has_a_tiny_and_a_released_variant():
    fams = {model_card(n).family for n in ALL}
    assert {"ecgfm", "net1d"} <= fams
    for fam in fams:
        cards = [model_card(n) for n in ALL if model_card(n).family == fam]
        assert any(c.tiny for c in cards), f"{fam} has no tiny variant for tests"
        assert any(c.released for c in cards), f"{fam} registers no released size"


@pytest.mark.parametrize("name", ALL)
def test_variant_matches_its_card(name):
    card = model_card(name)
    with torch.device("meta"):
        model = create_model(name)
    assert isinstance(model, EcgModel)
    assert model.family == card.family and model.contract == card.contract
    assert parameter_count(model) == card.parameters, f"{name}: card says {card.parameters:,}"
    json.dumps(model.config)  # stored as JSON by native checkpoints
    labels = card.label_names()
    if labels is not None:
        assert model.label_names == labels and model.n_classes == len(labels)
    assert card.licence and card.weights_source and card.paper
    groups = model.parameter_groups()
    ids = [id(p) for g in groups.values() for p in g]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))


def _input(model: EcgModel, n: int = 2) -> torch.Tensor:
    c = model.contract
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, len(c.leads), c.n_samples)).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(model.prepare(x), dtype=np.float32))


@pytest.mark.parametrize("name", TINY)
def test_tiny_variant_runs_and_round_trips(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = _input(model)
    with torch.no_grad():
        feats = model.features(x)
        emb = model.embed(x)
        pooled = model.pool(feats)
        assert feats.ndim == 3 and feats.shape[0] == 2 and feats.shape[2] == model.feature_dim()
        assert emb.shape == (2, model.embed_dim)
        assert torch.allclose(pooled, emb, atol=1e-5), "embed() must equal pool(features())"
        for layer in (0, -1):
            f = model.features(x, layer=layer)
            assert f.shape[0] == 2 and f.shape[2] == model.feature_dim(layer)
        with pytest.raises(ValueError):
            model.features(x, layer=model.num_layers)
    if model.get_classifier() is None and model.head_name is not None:
        model.reset_classifier(["a", "b", "c"])
    if model.get_classifier() is not None:
        with torch.no_grad():
            z = model.logits(x)
        assert z.shape == (2, model.n_classes) and torch.isfinite(z).all()
        trainable = model.freeze("linear")
        assert {id(p) for p in trainable} == {id(p) for p in model.get_classifier().parameters()}
        model.freeze("full")
    if model.has(ATTENTION):
        with torch.no_grad():
            a = model.attention(x)
        assert a.ndim == 3 and a.shape[0] == 2 and a.shape[1] == a.shape[2]
    path = save_checkpoint(model, tmp_path / f"{name}.safetensors")
    back = load_model(path)
    assert type(back) is type(model) and back.config == model.config and back.contract == model.contract
    with torch.no_grad():
        assert torch.equal(back.embed(x), model.embed(x))
        if model.get_classifier() is not None:
            assert torch.equal(back.logits(x), model.logits(x))


@pytest.fixture(scope="module")
def ptbxl_records(data_dir, tmp_path_factory):
    from typer.testing import CliRunner

    from ecgtool.cli import app

    src = data_dir / "ptbxl-500" / "records500" / "00000" / "00001_hr.hea"
    out = tmp_path_factory.mktemp("raw") / "rec.parquet"
    r = CliRunner().invoke(app, ["convert", str(src), "-o", str(out)])
    assert r.exit_code == 0, r.output
    return out


@pytest.mark.parametrize("preset", sorted(presets()))
def test_card_preset_gives_the_contract(preset, ptbxl_records, tmp_path):
    """The preset (with the card's leads, as embed applies it) turns a raw PTB-XL record into the contract."""
    from typer.testing import CliRunner

    from ecgtool.cli import app
    from ecgtool.io import read_table
    from ecgtool.signal.leads import normalize_leads

    cards = [c for c in model_cards().values() if c.contract.preset == preset]
    if not cards:  # a second pipeline of a family (e.g. a finetuning path): the family's released contract
        fam = next(f for f in family_cards().values() if preset in f.presets)
        cards = [c for c in fam.variants.values() if c.released]
    done = {}
    for c in cards:
        k = c.contract
        key = tuple(k.leads)
        if key not in done:
            out = tmp_path / f"pre{len(done)}.parquet"
            r = CliRunner().invoke(app, ["preprocess", "--preset", preset, "--leads", ",".join(k.leads),
                                         str(ptbxl_records), "-o", str(out)])
            assert r.exit_code == 0, r.output
            done[key] = read_table(str(out))
        table, meta = done[key]
        pre = meta.preprocessing
        assert pre.fs == k.fs and tuple(normalize_leads(pre.leads)) == tuple(normalize_leads(k.leads)), c.name
        assert pre.n_samples == k.n_samples and pre.normalisation == k.normalisation, c.name
        sig = table.column("signal").combine_chunks()
        assert table.num_rows >= 1 and len(sig[0].as_py()) == len(k.leads)
        assert len(sig[0].as_py()[0]) == k.n_samples


def test_normalised_table_lacking_lead_iii_is_zero_filled_not_derived(ptbxl_records, tmp_path):
    """III = II - I holds for millivolts, not for z-scored leads: a normalised table lacking III gets it
    zero-filled with a warning; a table still in mV gets it derived."""
    from typer.testing import CliRunner

    from ecgtool.cli import app
    from ecgtool.errors import RecordErrors
    from ecgtool.io import open_table
    from ecgtool.models.inference import Adapter

    contract = model_card("ecgfm-tiny").contract
    runs = {}
    for norm in ("per-lead-zscore", "none"):
        out = tmp_path / f"{norm}.parquet"
        r = CliRunner().invoke(app, ["preprocess", "--leads", "I,II,V1,V2,V3,V4,V5,V6", "--fs", "500",
                                     "--segment", "5", "--normalise", norm, str(ptbxl_records), "-o", str(out)])
        assert r.exit_code == 0, r.output
        runs[norm] = out
    with open_table(str(runs["per-lead-zscore"])) as reader:
        assert reader.meta.preprocessing.normalisation == contract.normalisation
        adapter = Adapter(contract, reader.meta, RecordErrors("fail"))
        ad = next(iter(adapter(reader)))
    iii = list(contract.leads).index("III")
    assert np.all(ad.x[:, :, iii] == 0)
    assert any("III" in m and "not derived" in m for m in adapter.notes)  # said on stderr as a warning
    # in mV (a model that takes raw millivolts): derived from I and II
    from dataclasses import replace

    raw_contract = replace(contract, normalisation="none")
    with open_table(str(runs["none"])) as reader:
        ad = next(iter(Adapter(raw_contract, reader.meta, RecordErrors("fail"))(reader)))
    i, ii = list(contract.leads).index("I"), list(contract.leads).index("II")
    np.testing.assert_allclose(ad.x[:, :, iii], ad.x[:, :, ii] - ad.x[:, :, i], atol=1e-6)
    assert np.abs(ad.x[:, :, iii]).max() > 0


def test_no_import_cycle_in_the_package():
    import subprocess
    import sys

    from conftest import ROOT

    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "import_cycles.py")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_non_commercial_weights_say_so_when_loaded(reference_dir, tmp_path):
    """HuBERT-ECG's weights are CC BY-NC 4.0: loading them prints a one-line note on stderr."""
    import subprocess
    import sys

    folder = reference_dir / "fixtures" / "hubertecg" / "hubert-ecg-reduced"
    r = subprocess.run([sys.executable, "-m", "ecgtool", "models", "import", str(folder), "-o",
                        str(tmp_path / "h.safetensors")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "non-commercial" in r.stdout  # the import report
    r = subprocess.run([sys.executable, "-m", "ecgtool", "models", "info", str(tmp_path / "h.safetensors")],
                       capture_output=True, text=True)
    notes = [ln for ln in r.stderr.splitlines() if "non-commercial" in ln]
    assert r.returncode == 0 and len(notes) == 1 and "CC BY-NC 4.0" in notes[0]
    r = subprocess.run([sys.executable, "-m", "ecgtool", "models", "info", "ecgfm-base"], capture_output=True,
                       text=True)
    assert "non-commercial" not in r.stderr


def test_docs_list_every_preset():
    from conftest import ROOT

    text = (ROOT / "docs" / "preprocessing.md").read_text(encoding="utf-8")
    for name in presets():
        assert f"| `{name}` |" in text, f"docs/preprocessing.md does not list preset {name}"
