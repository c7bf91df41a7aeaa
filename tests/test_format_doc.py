"""docs/format.md against the format's registries (ecgtool.io.schema.COLUMNS, ecgtool.io.metadata.META_KEYS),
both ways, and the registries against what the commands really write (a few PTB-XL records through
convert, preprocess, label, embed, predict and saliency with the bundled default model)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ecgtool.io import schema as S
from ecgtool.io.schema import TableMeta

DOC = Path(__file__).resolve().parents[1] / "docs" / "format.md"


# --------------------------------------------------------------------------- the document


def _section(title: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert m, f"docs/format.md has no '## {title}' section"
    return m.group(1)


def _table(section: str, first: str) -> list[list[str]]:
    """The rows (cells, backticks removed) of the Markdown table whose header starts with ``first``."""
    lines = section.splitlines()
    start = next((i for i, ln in enumerate(lines) if re.match(rf"\|\s*{first}\s*\|", ln)), None)
    assert start is not None, f"no table headed '{first}'"
    rows = []
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip().replace("`", "") for c in ln.strip().strip("|").split("|")])
    return rows


def _kinds(cell: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in cell.split(","))


def _required(c: S.Column) -> str:
    if set(c.required) == set(c.kinds):
        return "yes"
    return ", ".join(c.required) if c.required else "no"


def _documented_columns() -> set[tuple]:
    rows = _table(_section("Columns"), "column")
    assert all(len(r) == 5 for r in rows), [r for r in rows if len(r) != 5]
    return {(name, type_, _kinds(kinds), required) for name, type_, kinds, required, _ in rows}


def _registered_columns() -> set[tuple]:
    return {(c.name, c.text, c.kinds, _required(c)) for c in S.COLUMNS}


def _documented_keys() -> set[tuple]:
    rows = _table(_section("Table metadata"), "key")
    assert all(len(r) == 4 for r in rows), [r for r in rows if len(r) != 4]
    return {(name, type_, _kinds(kinds)) for name, type_, kinds, _ in rows}


def _registered_keys() -> set[tuple]:
    return {(k.name, k.type_text, k.kinds) for k in S.META_KEYS}


REGISTRIES = {"columns": (_documented_columns, _registered_columns, "ecgtool.io.schema.COLUMNS"),
              "metadata keys": (_documented_keys, _registered_keys, "ecgtool.io.metadata.META_KEYS")}


@pytest.mark.parametrize("what", list(REGISTRIES))
def test_the_document_and_the_registry_agree(what):
    documented, registered, home = REGISTRIES[what]
    missing = registered() - documented()
    assert not missing, f"registered {what} not documented so in docs/format.md: {sorted(missing)}"
    extra = documented() - registered()
    assert not extra, f"docs/format.md documents {what} that {home} does not register so: {sorted(extra)}"


def test_the_registries_hold_together():
    for c in S.COLUMNS:
        assert set(c.kinds) <= set(S.KINDS) and set(c.required) <= set(c.kinds), c.name
        built = c.type(**{k: 3 for k in "DLT" if re.search(rf"\b{k}\b", c.text)})
        assert c.accepts(built), f"{c.name}: the built type {built} is not the registered {c.text}"
    names = [(c.name, k) for c in S.COLUMNS for k in c.kinds]
    assert len(names) == len(set(names)), "a column is registered twice for one kind"
    assert len(S.META_KEY_NAMES) == len(S.META_KEYS)
    for k in S.META_KEYS:
        assert set(k.kinds) <= set(S.ALL_KINDS), k.name
        assert hasattr(TableMeta(), k.name), f"TableMeta has no accessor for {k.name}"


# --------------------------------------------------------------------------- setting and reading keys


def test_keys_are_set_only_as_registered():
    meta = TableMeta(kind="records")
    out = meta.derive(kind="predictions", label_names=["AF"], thresholds=[0.5], temperature=1)
    assert (out.label_names, out.thresholds, out.temperature) == (["AF"], [0.5], 1.0)
    assert isinstance(out.temperature, float) and meta.info == {}
    with pytest.raises(ValueError, match="not registered"):
        meta.derive(kind="predictions", labelnames=["AF"])
    with pytest.raises(ValueError, match="not for a labels table"):
        meta.derive(kind="labels", thresholds=[0.5])
    with pytest.raises(ValueError, match="list<string>"):
        meta.derive(kind="labels", label_names="AF")
    with pytest.raises(AttributeError):
        out.model = "x"
    assert TableMeta.create("neighbours", k=3, same_patient=True).same_patient is True


def test_accessors_read_typed_or_none():
    meta = TableMeta(kind="embeddings", info={"model": "m.safetensors", "embedding": {"dim": 256, "pool": "mean"},
                                              "label_names": "not a list", "n_samples": 2500})
    assert meta.model == "m.safetensors" and meta.dim == 256 and meta.n_samples == 2500
    assert meta.label_names is None and meta.thresholds is None and meta.contract is None
    assert TableMeta().dim is None and TableMeta().preprocessing is None


# --------------------------------------------------------------------------- real tables


@pytest.fixture(scope="module")
def tables(data_dir, tmp_path_factory):
    """A few PTB-XL records through every command that writes one of the six kinds."""
    from typer.testing import CliRunner

    from ecgtool.cli import app

    ptb = data_dir / "ptbxl-500"
    out = tmp_path_factory.mktemp("format")
    runner = CliRunner()

    def run(*args):
        r = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        return out / next(str(a) for i, a in enumerate(args) if i and args[i - 1] == "-o")

    hea = [ptb / "records500" / "00000" / f"0000{i}_hr.hea" for i in (1, 2, 3)]
    rec = run("convert", *hea, "--join", ptb / "ptbxl_database.csv", "-o", out / "rec.parquet")
    with open(ptb / "ptbxl_database.csv", newline="") as f:
        joined = next(csv.reader(f))
    return {
        "joined": joined,
        "records": rec,
        "segments": run("preprocess", "--preset", "ecg-fm", rec, "-o", out / "seg.parquet"),
        "labels": run("label", rec, "--vocab", "ptbxl-superclass", "--scp-column", "scp_codes", "--weights",
                      "--split-column", "strat_fold", "-o", out / "lab.parquet"),
        "embeddings": run("embed", rec, "-o", out / "emb.parquet"),
        "windows": run("embed", rec, "--pool", "none", "--local", "-o", out / "win.parquet"),
        "predictions": run("predict", rec, "-o", out / "pred.parquet"),
        "saliency": run("saliency", rec, "--steps", "2", "-o", out / "sal.parquet"),
    }


def _check(path: Path, kind: str, passed: dict[str, pa.DataType]) -> tuple[pa.Schema, TableMeta]:
    """Every column and metadata key of the table at ``path`` is registered for ``kind`` with its type
    (or is one of the ``passed`` input columns, unchanged); every required column is there."""
    schema = pq.read_schema(path)
    meta = TableMeta.from_schema(schema)
    assert meta.kind == kind
    names = meta.label_names or []
    for f in schema:
        spec = S.column_spec(f.name, kind, names)
        if spec is None:
            assert kind in S.PASSTHROUGH_KINDS and f.name in passed, f"{kind}: column {f.name} is not registered"
            assert passed[f.name] is None or f.type == passed[f.name], f"{kind}: {f.name} changed type"
        else:
            assert spec.accepts(f.type), f"{kind}: column {f.name} is {f.type}, registered as {spec.text}"
    for c in S.COLUMNS:
        if kind in c.required:
            want = [c.name.replace("<label>", n) for n in names] if "<label>" in c.name else [c.name]
            assert set(want) <= set(schema.names), f"{kind}: required column {c.name} is missing"
    raw = json.loads(schema.metadata[S.META_KEY])
    for key, value in raw.items():
        spec = S.META_KEY_NAMES.get(key)
        assert spec is not None, f"{kind}: metadata key {key} is not registered"
        assert kind in spec.kinds, f"{kind}: metadata key {key} is registered for {spec.kinds}"
        assert spec.accepts(value), f"{kind}: metadata key {key} holds {value!r}, registered as {spec.type_text}"
        if key not in ("format_version", "kind", "history"):
            assert getattr(meta, key) == value, key
    return schema, meta


def test_converted_records_are_registered(tables):
    schema, _ = _check(tables["records"], "records", dict.fromkeys(tables["joined"]))
    assert schema.names[:4 + len(S.CONVERT_METADATA)] == [f.name for f in S.records_fields()]


def test_segments_are_registered(tables):
    rec = pq.read_schema(tables["records"])
    schema, meta = _check(tables["segments"], "segments", {f.name: f.type for f in rec})
    L, T = S.fixed_shape(schema.field(S.SIGNAL).type)
    own = S.segments_fields(L, T, segment=True, lead_mask=True)
    assert schema.names[:len(own)] == [f.name for f in own] and (L, T) == (len(meta.leads), meta.n_samples)
    assert meta.preprocessing.preset == "ecg-fm"


def test_labels_are_registered(tables):
    rec = pq.read_schema(tables["records"])
    schema, meta = _check(tables["labels"], "labels", {"strat_fold": rec.field("strat_fold").type})
    assert meta.label_names == ["NORM", "MI", "STTC", "CD", "HYP"] and "NORM__w" in schema.names


def test_embeddings_are_registered(tables):
    rec = pq.read_schema(tables["records"])
    passed = {f.name: f.type for f in rec}
    schema, meta = _check(tables["embeddings"], "embeddings", passed)
    assert schema.field(S.EMBEDDING).type == pa.list_(pa.float32(), meta.dim)
    windows, _ = _check(tables["windows"], "embeddings", passed)
    assert windows.names[1] == S.SEGMENT and S.LOCAL in windows.names


def test_predictions_are_registered(tables):
    rec = pq.read_schema(tables["records"])
    schema, meta = _check(tables["predictions"], "predictions", {f.name: f.type for f in rec})
    assert len(meta.thresholds) == len(meta.label_names) and meta.temperature > 0
    own = S.predictions_fields(meta.label_names, meta.task if meta.conformal else None)
    assert schema.names[-len(own):] == [f.name for f in own]


def test_saliency_is_registered(tables):
    schema, meta = _check(tables["saliency"], "saliency", {})
    assert schema.names == [f.name for f in S.saliency_fields()] and meta.method in ("attention", "gradient")
