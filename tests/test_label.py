"""ecgtool label: SNOMED CT, PTB-XL SCP, CinC 2017 and free text on real data."""

from __future__ import annotations

import ast
import csv
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ecgtool.io import TableMeta, read_table, write_table
from ecgtool.labels import (
    SourceColumns,
    label_text,
    load_vocabulary,
    pos_weight,
    run_label,
    scp_table,
    snomed_table,
)


def _write(path: Path, rows: list[dict]) -> str:
    write_table(path, pa.Table.from_pylist(rows), TableMeta(kind="records"))
    return str(path)


def _labels(path) -> pd.DataFrame:
    table, meta = read_table(path)
    assert meta.kind == "labels"
    return table.to_pandas()


# --------------------------------------------------------------------------- SNOMED CT (CinC 2021)


@pytest.fixture(scope="module")
def cinc2021_rows(data_dir):
    import wfdb

    rows = []
    for hea in sorted((data_dir / "cinc2021-sample").glob("*.hea")):
        rec = wfdb.rdheader(str(hea.with_suffix("")))
        dx = [c.split(":", 1)[1].strip() for c in rec.comments if c.strip().startswith("Dx")]
        rows.append({"record_id": rec.record_name, "dx": dx[0].split(",") if dx else []})
    assert len(rows) == 50
    return rows


def test_snomed_scored_classes_match_direct_lookup(tmp_path, cinc2021_rows, reference_dir):
    rows = [dict(r) for r in cinc2021_rows]
    rows.append({"record_id": "bad1", "dx": ["999999999", "426783006"]})  # an unknown code + NSR
    rows.append({"record_id": "bad2", "dx": ["123"]})  # only an unknown code
    rows.append({"record_id": "none", "dx": []})
    src = _write(tmp_path / "c21.parquet", rows)
    rep, _ = run_label(src, str(tmp_path / "lab.parquet"), vocab="snomed")
    df = _labels(tmp_path / "lab.parquet").set_index("record_id")

    # direct computation from the challenge's own table
    table = pd.read_csv(reference_dir / "snomed-ct-cinc2021.csv", dtype=str)
    scored = table[table.scored == "1"]
    pairs = {("733534002", "164909002"), ("713427006", "59118001"), ("284470004", "63593006"),
             ("427172004", "17338001")}
    groups = []
    seen = set()
    for code, abbr in zip(scored.snomed_code, scored.abbreviation):
        if code in seen:
            continue
        group = {code} | {b for a, b in pairs if a == code} | {a for a, b in pairs if b == code}
        seen |= group
        groups.append((group, "|".join(scored.set_index("snomed_code").loc[sorted(group, key=list(scored.snomed_code).index), "abbreviation"])))
    assert len(groups) == 26
    assert [g[1] for g in groups] == list(df.columns)
    for r in cinc2021_rows:
        for group, name in groups:
            assert df.loc[r["record_id"], name] == int(bool(group & set(r["dx"]))), (r, name)
    # the equivalence pairs: RBBB (59118001) makes the merged CRBBB|RBBB class positive
    assert df["CRBBB|RBBB"].sum() == sum("59118001" in r["dx"] or "713427006" in r["dx"] for r in cinc2021_rows) > 0
    # unknown codes are listed and counted, not dropped silently
    assert rep["unknown_codes"]["codes"]["snomed"] == {"999999999": 1, "123": 1}
    assert rep["unknown_codes"]["records"] == 2
    assert df.loc["bad1", "NSR"] == 1
    assert df.loc[["bad2", "none"]].isna().all().all()
    assert rep["unlabelled"] == {"empty": 1, "unrecognised": 1, "out_of_scope": 0}
    # known but unscored codes are reported as unmapped, with their names
    assert rep["unmapped"]["items"]["snomed:55827005"]["name"] == "left ventricular high voltage"


def test_snomed_codes_into_ecgfm_17(tmp_path, cinc2021_rows):
    src = _write(tmp_path / "c21.parquet", cinc2021_rows)
    rep, meta = run_label(src, str(tmp_path / "lab.parquet"), vocab="ecgfm-17")
    df = _labels(tmp_path / "lab.parquet").set_index("record_id")
    assert meta.info["label_names"][1] == "Sinus rhythm" and len(meta.info["label_names"]) == 17
    for r in cinc2021_rows:
        sinus = bool({"426783006", "426177001", "427084000", "427393009"} & set(r["dx"]))
        assert df.loc[r["record_id"], "Sinus rhythm"] == int(sinus)
        tachy = "427084000" in r["dx"] or "713422000" in r["dx"]
        assert df.loc[r["record_id"], "Tachycardia"] == int(tachy)
        pvc = bool({"427172004", "17338001"} & set(r["dx"]))
        assert df.loc[r["record_id"], "Premature ventricular contraction"] == int(pvc)


# --------------------------------------------------------------------------- PTB-XL SCP


def _direct_superclasses(db: pd.DataFrame, scp: pd.DataFrame, min_lik: float = 0.0):
    diag = scp[scp.diagnostic == 1]
    out = {}
    for ecg_id, codes in zip(db.ecg_id, db.scp_codes):
        d = ast.literal_eval(codes)
        classes = {diag.loc[k, "diagnostic_class"] for k, v in d.items()
                   if k in diag.index and not (0 < v < min_lik)}
        out[str(ecg_id)] = classes
    return out


@pytest.mark.parametrize("min_lik", [0.0, 50.0])
def test_ptbxl_superclasses_match_scp_statements(tmp_path, data_dir, min_lik):
    base = data_dir / "ptbxl-500"
    db = pd.read_csv(base / "ptbxl_database.csv")
    scp = pd.read_csv(base / "scp_statements.csv", index_col=0)
    direct = _direct_superclasses(db, scp, min_lik)
    # the plain CSV straight in: no record table needed
    rep, meta = run_label(str(base / "ptbxl_database.csv"), str(tmp_path / "sup.parquet"),
                          columns=SourceColumns(scp="scp_codes"), id_column="ecg_id",
                          split_column="strat_fold", min_likelihood=min_lik)
    df = _labels(tmp_path / "sup.parquet").set_index("record_id")
    assert list(df.columns[-5:]) == ["NORM", "MI", "STTC", "CD", "HYP"]
    assert meta.info["vocabulary"] == "ptbxl-superclass"
    for rid, classes in direct.items():
        row = df.loc[rid]
        if not classes:  # PTB-XL convention: no diagnostic statement -> not in the superclass task
            assert row[["NORM", "MI", "STTC", "CD", "HYP"]].isna().all(), rid
        else:
            for c in ["NORM", "MI", "STTC", "CD", "HYP"]:
                assert row[c] == int(c in classes), (rid, c)
    n_empty = sum(1 for c in direct.values() if not c)
    assert rep["unlabelled"]["out_of_scope"] == n_empty > 0
    # pos_weight per fold, recomputed from the direct labels
    folds = dict(zip(db.ecg_id.astype(str), db.strat_fold.astype(str)))
    for lab in rep["labels"]:
        for fold in ("1", "10"):
            ids = [i for i, f in folds.items() if f == fold and direct[i]]
            pos = sum(lab["name"] in direct[i] for i in ids)
            neg = len(ids) - pos
            s = lab["splits"][fold]
            assert (s["positive"], s["negative"]) == (pos, neg)
            assert s["pos_weight"] == pytest.approx(neg / pos)
            assert s["pos_weight"] == pytest.approx((1 - s["prevalence"]) / s["prevalence"])


def test_ptbxl_likelihood_weights_and_statements(tmp_path, data_dir):
    base = data_dir / "ptbxl-500"
    db = pd.read_csv(base / "ptbxl_database.csv").head(120)
    csv_path = tmp_path / "db.csv"
    db.to_csv(csv_path, index=False)
    run_label(str(csv_path), str(tmp_path / "st.parquet"), vocab="ptbxl-statement",
              columns=SourceColumns(scp="scp_codes"), id_column="ecg_id", weights=True)
    df = _labels(tmp_path / "st.parquet").set_index("record_id")
    for ecg_id, codes in zip(db.ecg_id, db.scp_codes):
        d = ast.literal_eval(codes)
        for code, lik in d.items():
            assert df.loc[str(ecg_id), code] == 1
            expect = lik / 100 if 0 < lik < 100 else 1.0
            assert df.loc[str(ecg_id), code + "__w"] == pytest.approx(expect)
        assert df.loc[str(ecg_id), [c for c in scp_table().description if c not in d]].sum() == 0
    # uncertain -> missing: every statement with likelihood 15..80 becomes null
    run_label(str(csv_path), str(tmp_path / "st2.parquet"), vocab="ptbxl-statement",
              columns=SourceColumns(scp="scp_codes"), id_column="ecg_id", uncertain="missing")
    df2 = _labels(tmp_path / "st2.parquet").set_index("record_id")
    n_unc = sum(1 for c in db.scp_codes for v in ast.literal_eval(c).values() if 0 < v < 100)
    assert int(df2.isna().sum().sum()) == n_unc > 0


# --------------------------------------------------------------------------- CinC 2017


def test_cinc2017_classes_and_join(tmp_path, data_dir):
    ref = pd.read_csv(data_dir / "cinc2017" / "REFERENCE.csv", header=None, names=["record", "label"], dtype=str)
    ref = ref.head(400)
    # class column on the table itself
    src = _write(tmp_path / "c17.parquet", [{"record_id": r, "label": c} for r, c in zip(ref.record, ref.label)])
    rep, _ = run_label(src, str(tmp_path / "lab.parquet"), columns=SourceColumns(classes="label"))
    df = _labels(tmp_path / "lab.parquet").set_index("record_id")
    assert list(df.columns) == ["normal", "AF", "other rhythm", "noisy"]
    names = {"N": "normal", "A": "AF", "O": "other rhythm", "~": "noisy"}
    for r, c in zip(ref.record, ref.label):
        assert df.loc[r].tolist() == [int(names[c] == n) for n in df.columns]
    assert (df.sum(axis=1) == 1).all()
    assert rep["exclusive"] == {"several_positive": 0, "no_positive": 0}
    counts = ref.label.value_counts()
    got = {lab["name"]: lab["splits"]["all"]["positive"] for lab in rep["labels"]}
    assert got == {names[k]: int(v) for k, v in counts.items()} | {n: 0 for n in names.values() if n not in
                                                                    {names[k] for k in counts.index}}
    # a table of ids only + the headerless REFERENCE.csv joined; 3 ids that are not in it
    ids = [{"record_id": f"training/{r}.hea"} for r in ref.record[:50]] + [{"record_id": f"X{i}"} for i in range(3)]
    src2 = _write(tmp_path / "ids.parquet", ids)
    rep2, _ = run_label(src2, str(tmp_path / "lab2.parquet"), join=str(data_dir / "cinc2017" / "REFERENCE.csv"),
                        columns=SourceColumns(classes="label"))
    j = rep2["join"]
    assert j["headerless"] and (j["joined"], j["not_joined"]) == (50, 3)
    assert j["not_joined_examples"] == ["X0", "X1", "X2"]
    df2 = _labels(tmp_path / "lab2.parquet").set_index("record_id")
    assert df2.loc[["X0", "X1", "X2"]].isna().all().all()
    assert rep2["unlabelled"]["empty"] == 3
    assert df2.loc[f"training/{ref.record[0]}.hea", names[ref.label[0]]] == 1


def test_unknown_class_listed(tmp_path):
    src = _write(tmp_path / "t.parquet", [{"record_id": "a", "label": "N"}, {"record_id": "b", "label": "Q"}])
    rep, _ = run_label(src, str(tmp_path / "o.parquet"), columns=SourceColumns(classes="label"))
    assert rep["unknown_codes"]["codes"] == {"class": {"Q": 1}}


# --------------------------------------------------------------------------- free text


def test_negation_uncertainty_synonyms():
    r = label_text("No evidence of atrial fibrillation.")
    assert r.negative == {"atrial_fibrillation"} and not r.positive
    assert label_text("atrial fibrillation is absent").negative == {"atrial_fibrillation"}
    assert label_text("Sinus rhythm without AV block").positive == {"sinus_rhythm": 1.0}
    assert label_text("Possible atrial flutter").positive == {"atrial_flutter": 0.5}
    assert label_text("probable LVH").positive == {"lvh": 0.7}
    assert label_text("cannot rule out inferior infarct").positive == {"inferior_mi": 0.5}
    assert label_text("rule out acute MI").positive == {"acute_mi": 0.5}
    assert label_text("Borderline ECG, possible left atrial enlargement").positive == {"left_atrial_enlargement": 0.5}
    # the negation stops at the clause: the second finding stays positive
    r = label_text("no ST elevation; left bundle branch block")
    assert r.negative == {"st_elevation"} and r.positive == {"lbbb": 1.0}
    # longest match: incomplete RBBB is not RBBB; abbreviations are case-sensitive words
    assert label_text("incomplete RBBB").positive == {"incomplete_rbbb": 1.0}
    assert label_text("Complete right bundle branch block").positive == {"rbbb": 1.0}
    assert label_text("AF with RVR").positive == {"atrial_fibrillation": 1.0}
    assert label_text("a safe leaf").positive == {}
    # spelling fixes from the data file (LUDB's 'intravintricular')
    assert "ivcd" in label_text("Non-specific intravintricular conduction delay").positive
    assert label_text("III degree AV-block").positive == {"third_degree_av_block": 1.0}
    assert label_text("I degree AV block").positive == {"first_degree_av_block": 1.0}


def test_hierarchy(tmp_path):
    rows = [
        {"record_id": "flutter", "diagnosis": "Atrial flutter"},
        {"record_id": "avb1", "diagnosis": "1st degree AV block"},
        {"record_id": "no_avb", "diagnosis": "sinus rhythm. no AV block"},
        {"record_id": "maybe", "diagnosis": "possible atrial fibrillation"},
    ]
    src = _write(tmp_path / "t.parquet", rows)
    run_label(src, str(tmp_path / "o.parquet"), weights=True)
    df = _labels(tmp_path / "o.parquet").set_index("record_id")
    assert df.loc["flutter", "supraventricular_arrhythmia"] == 1 and df.loc["flutter", "arrhythmia"] == 1
    assert df.loc["flutter", "atrial_fibrillation"] == 0
    assert df.loc["avb1", "av_block"] == 1 and df.loc["avb1", "conduction_disturbance"] == 1
    assert df.loc["no_avb", "av_block"] == 0 and df.loc["no_avb", "first_degree_av_block"] == 0
    assert df.loc["maybe", "atrial_fibrillation"] == 1
    assert df.loc["maybe", "atrial_fibrillation__w"] == pytest.approx(0.5)
    assert df.loc["maybe", "supraventricular_arrhythmia__w"] == pytest.approx(0.5)
    run_label(src, str(tmp_path / "o2.parquet"), hierarchy=False)
    df2 = _labels(tmp_path / "o2.parquet").set_index("record_id")
    assert df2.loc["flutter", "supraventricular_arrhythmia"] == 0 and df2.loc["avb1", "av_block"] == 0


def test_empty_and_foreign_text(tmp_path, data_dir):
    db = pd.read_csv(data_dir / "ptbxl-500" / "ptbxl_database.csv").head(60)
    rows = [{"record_id": str(i), "report": t} for i, t in zip(db.ecg_id, db.report)]  # German report lines
    rows += [{"record_id": "empty", "report": ""}, {"record_id": "null", "report": None},
             {"record_id": "en", "report": "sinus rhythm, left axis deviation"}]
    src = _write(tmp_path / "t.parquet", rows)
    rep, _ = run_label(src, str(tmp_path / "o.parquet"), vocab="ecgfm-17")
    df = _labels(tmp_path / "o.parquet").set_index("record_id")
    assert rep["records"] == 63
    assert rep["unlabelled"]["empty"] == 2
    # German text: nearly all unrecognised (counted, with examples), never a crash
    assert rep["unlabelled"]["unrecognised"] >= 50
    assert rep["unrecognised_examples"] and "text" in rep["unrecognised_examples"][0]
    assert df.loc[["empty", "null"]].isna().all().all()
    assert df.loc["en", "Sinus rhythm"] == 1


# --------------------------------------------------------------------------- LUDB agreement


def test_ludb_text_agrees_with_ludb_csv(data_dir):
    from ecgtool.labels import ludb

    ref, unmatched = ludb.reference_labels(data_dir / "ludb" / "ludb.csv")
    assert unmatched == [] and len(ref) == 200
    rows = ludb.agreement(ludb.header_texts(data_dir / "ludb"), ref)
    by = {r["concept"]: r for r in rows}
    for c in ["sinus_rhythm", "sinus_bradycardia", "atrial_fibrillation", "atrial_flutter", "normal_axis",
              "left_axis_deviation", "vertical_axis", "horizontal_axis", "right_axis_deviation", "lvh",
              "left_atrial_enlargement", "incomplete_rbbb", "lafb", "first_degree_av_block",
              "third_degree_av_block", "electronic_pacemaker", "pvc", "pac", "early_repolarization"]:
        assert by[c]["csv_positive"] > 0, c
    # measured: 1.000 on every concept but bigeminy (0.995: the csv map files
    # "Atrial extrasystole, type: bigemini" under PAC only)
    assert min(r["agreement"] for r in rows) >= 0.99
    assert all(r["kappa"] >= 0.99 for r in rows if r["csv_positive"] >= 3)


def test_ludb_label_table_through_cli(tmp_path, data_dir, cli):
    from ecgtool.labels import ludb

    texts = ludb.header_texts(data_dir / "ludb")
    src = _write(tmp_path / "ludb.parquet", [{"record_id": k, "diagnosis": v} for k, v in texts.items()])
    out = tmp_path / "lab.parquet"
    rep_path = tmp_path / "rep.csv"
    res = cli(["label", src, "-o", out, "--vocab", "ecgfm-17", "--report", rep_path])
    assert res.exit_code == 0, res.output
    df = _labels(out).set_index("record_id")
    ref, _ = ludb.reference_labels(data_dir / "ludb" / "ludb.csv")
    assert df["Atrial fibrillation"].sum() == sum("atrial_fibrillation" in ref[i] for i in df.index) == 15
    assert df["Electronic pacemaker"].sum() == 10
    assert df["1st degree atrioventricular block"].sum() == 10
    with open(rep_path) as fh:
        rows = list(csv.DictReader(fh))
    af = next(r for r in rows if r["label"] == "Atrial fibrillation")
    assert int(af["positive"]) == 15 and float(af["pos_weight"]) == pytest.approx(185 / 15)


# --------------------------------------------------------------------------- vocabularies


def test_user_vocabulary_and_ecgfounder(tmp_path, reference_dir):
    v = {"name": "mine", "labels": [{"name": "AF-or-flutter", "match": ["atrial_fibrillation", "atrial_flutter"]},
                                    {"name": "RBBB+LAFB", "all": ["rbbb", "lafb"]},
                                    "Sinus bradycardia"]}
    (tmp_path / "v.json").write_text(json.dumps(v))
    rows = [{"record_id": "1", "diagnosis": "atrial flutter"},
            {"record_id": "2", "diagnosis": "RBBB. Left anterior hemiblock. Sinus bradycardia"},
            {"record_id": "3", "diagnosis": "RBBB"}]
    src = _write(tmp_path / "t.parquet", rows)
    run_label(src, str(tmp_path / "o.parquet"), vocab=str(tmp_path / "v.json"))
    df = _labels(tmp_path / "o.parquet").set_index("record_id")
    assert df.to_dict("index") == {
        "1": {"AF-or-flutter": 1, "RBBB+LAFB": 0, "Sinus bradycardia": 0},
        "2": {"AF-or-flutter": 0, "RBBB+LAFB": 1, "Sinus bradycardia": 1},
        "3": {"AF-or-flutter": 0, "RBBB+LAFB": 0, "Sinus bradycardia": 0},
    }
    (tmp_path / "bad.json").write_text(json.dumps({"labels": [{"name": "x", "match": ["no_such_concept"]}]}))
    from ecgtool.errors import InputError

    with pytest.raises(InputError, match="no_such_concept"):
        load_vocabulary(str(tmp_path / "bad.json"))
    # ECGFounder's 150 names from the reference file: order kept, names read as concepts
    ef = load_vocabulary(str(reference_dir / "ecgfounder-labels.txt"))
    names = [ln.strip() for ln in (reference_dir / "ecgfounder-labels.txt").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert ef.label_names == names and len(names) == 150
    lab = {x.name: x for x in ef.labels}
    assert lab["ATRIAL FIBRILLATION"].match == ["atrial_fibrillation"]
    assert lab["WITH 1ST DEGREE AV BLOCK"].match == ["first_degree_av_block"]
    assert not lab["T WAVE INVERSION NOW EVIDENT IN"].mapped  # serial comparisons stay unmapped
    assert "QT HAS SHORTENED" in ef.unmapped


def test_pos_weight_edge_cases():
    assert pos_weight(10, 30) == (3.0, None)
    assert pos_weight(0, 30) == (None, "no positives")
    assert pos_weight(5, 0) == (0.0, "no negatives")
    assert pos_weight(0, 0) == (None, "no labelled records")


def test_snomed_table_is_the_challenge_table(reference_dir):
    t = snomed_table()
    with open(reference_dir / "snomed-ct-cinc2021.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(t.names) == len(rows) and len(t.scored) == sum(r["scored"] == "1" for r in rows) == 30
    assert len(load_vocabulary("snomed").labels) == 26


# --------------------------------------------------------------------------- pipes


def _has_command(name: str) -> bool:
    out = subprocess.run([sys.executable, "-m", "ecgtool", "--help"], capture_output=True, text=True)
    return f" {name} " in out.stdout


def test_pipe_convert_to_label(tmp_path, data_dir):
    if not _has_command("convert"):
        pytest.skip("ecgtool convert is not registered in this checkout")
    recs = sorted((data_dir / "cinc2021-sample").glob("E*.hea"))[:6]
    conv = subprocess.Popen([sys.executable, "-m", "ecgtool", "convert", *map(str, recs), "-o", "-"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = tmp_path / "lab.parquet"
    lab = subprocess.run([sys.executable, "-m", "ecgtool", "label", "-", "--vocab", "snomed", "-o", str(out),
                          "--report", str(tmp_path / "r.json")], stdin=conv.stdout, capture_output=True, text=True)
    conv.stdout.close()
    conv.wait()
    assert conv.returncode == 0 and lab.returncode == 0, lab.stderr
    assert "snomed: 26 labels" in lab.stderr
    df = pq.read_table(out).to_pandas()
    assert len(df) == 6
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["labelled"] == 6 and rep["sources"] == {"codes": "dx"}
    import wfdb

    for hea in recs:
        rec = wfdb.rdheader(str(hea.with_suffix("")))
        dx = next(c for c in rec.comments if c.strip().startswith("Dx")).split(":", 1)[1].strip().split(",")
        row = df[df.record_id.str.contains(rec.record_name)].iloc[0]
        assert row["STach"] == int("427084000" in dx)
        assert row["NSR"] == int("426783006" in dx)


def test_cli_list_report_only_and_errors(tmp_path, cli, cinc2021_rows):
    res = cli(["label", "--list-vocabs"])
    assert res.exit_code == 0
    names = [ln.split("\t")[0] for ln in res.output.splitlines()]
    assert {"snomed", "ptbxl-superclass", "cinc2017", "ecgfm-17", "ecgfounder-150", "concepts"} <= set(names)
    src = _write(tmp_path / "c21.parquet", cinc2021_rows)
    rep = tmp_path / "r.json"
    res = cli(["label", src, "--report-only", "--report", rep])
    assert res.exit_code == 0 and res.stdout_bytes == b""
    d = json.loads(rep.read_text())
    assert d["vocabulary"] == "snomed" and d["records"] == 50
    res = cli(["label", src, "--vocab", "no-such-vocab", "-o", tmp_path / "x.parquet"])
    assert res.exit_code == 2 and "unknown vocabulary" in res.output
    assert not (tmp_path / "x.parquet").exists()
    res = cli(["label", src, "--text-column", "nope", "-o", tmp_path / "x.parquet"])
    assert res.exit_code == 2 and "no column 'nope'" in res.output


def test_pipe_convert_join_cinc2017(tmp_path, data_dir):
    if not _has_command("convert"):
        pytest.skip("ecgtool convert is not registered in this checkout")
    base = data_dir / "cinc2017"
    recs = sorted(base.glob("A0000*.hea"))[:8]
    conv = subprocess.Popen([sys.executable, "-m", "ecgtool", "convert", *map(str, recs), "--join",
                             str(base / "REFERENCE.csv"), "-o", "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = tmp_path / "c17.parquet"
    lab = subprocess.run([sys.executable, "-m", "ecgtool", "label", "-", "--class-column", "label", "-o", str(out)],
                         stdin=conv.stdout, capture_output=True, text=True)
    conv.stdout.close()
    conv.wait()
    assert lab.returncode == 0, lab.stderr
    df = pq.read_table(out).to_pandas()
    ref = dict(pd.read_csv(base / "REFERENCE.csv", header=None, dtype=str).values)
    names = {"N": "normal", "A": "AF", "O": "other rhythm", "~": "noisy"}
    assert len(df) == len(recs)
    for _, row in df.iterrows():
        rec = Path(row["record_id"]).name
        assert row[names[ref[rec]]] == 1 and row[list(names.values())].sum() == 1


def test_segment_table_gives_one_label_row_per_record(tmp_path, cinc2021_rows):
    # after `preprocess --segment` every record has several rows with the same id and
    # metadata; labels belong to records, so each id is labelled (and counted) once
    rows = []
    for r in cinc2021_rows[:6]:
        for seg in range(3):
            rows.append({"record_id": r["record_id"], "segment": seg, "dx": r["dx"]})
    src = _write(tmp_path / "seg.parquet", rows)
    once = _write(tmp_path / "rec.parquet", [dict(r) for r in cinc2021_rows[:6]])
    rep_seg, _ = run_label(src, str(tmp_path / "lab_seg.parquet"), vocab="snomed")
    rep_rec, _ = run_label(once, str(tmp_path / "lab_rec.parquet"), vocab="snomed")
    seg, rec = _labels(tmp_path / "lab_seg.parquet"), _labels(tmp_path / "lab_rec.parquet")
    assert list(seg["record_id"]) == [r["record_id"] for r in cinc2021_rows[:6]]
    pd.testing.assert_frame_equal(seg, rec)
    assert rep_seg["records"] == 6 and rep_seg["repeated_rows"] == 12 and rep_rec["repeated_rows"] == 0
    assert rep_seg["labels"] == rep_rec["labels"]


def test_label_join_writes_ids_as_convert_does(tmp_path, data_dir, cli):
    """patient_id '15709.0' in ptbxl_database.csv is '15709' from label --join and from convert --join."""
    import pyarrow.parquet as pq

    heads = sorted((data_dir / "ptbxl-500" / "records500").rglob("*.hea"))[:3]
    db = data_dir / "ptbxl-500" / "ptbxl_database.csv"
    assert cli(["convert", *heads, "-o", tmp_path / "r.parquet"]).exit_code == 0
    assert cli(["convert", *heads, "--join", db, "-o", tmp_path / "j.parquet"]).exit_code == 0
    res = cli(["label", tmp_path / "r.parquet", "--join", db, "-o", tmp_path / "l.parquet"])
    assert res.exit_code == 0, res.stderr
    conv, lab = pq.read_table(tmp_path / "j.parquet"), pq.read_table(tmp_path / "l.parquet")
    assert lab.schema.field("patient_id").type == pa.string()
    assert lab.column("patient_id").to_pylist() == conv.column("patient_id").to_pylist()
    assert all(p.isdigit() for p in lab.column("patient_id").to_pylist())


def test_one_join_rule_for_convert_and_label(data_dir, tmp_path, cli):
    """CinC 2017's headerless REFERENCE.csv joins to the same column names through convert and label."""
    import pyarrow.parquet as pq

    ref = data_dir / "cinc2017" / "REFERENCE.csv"
    heas = [data_dir / "cinc2017" / f"A0000{i}.hea" for i in (1, 2, 3)]
    r = cli(["convert", *heas, "--join", ref, "-o", tmp_path / "c.parquet"])
    assert r.exit_code == 0, r.output
    conv = pq.read_table(tmp_path / "c.parquet")
    assert "label" in conv.schema.names and "col1" not in conv.schema.names
    assert conv.column("label").to_pylist() == ["N", "N", "N"] or set(conv.column("label").to_pylist()) <= set("NAO~")
    rec = tmp_path / "ids.csv"
    rec.write_text("record_id\nA00001\nA00002\nA00003\n")
    r = cli(["label", rec, "--join", ref, "--class-column", "label", "--vocab", "cinc2017", "-o", tmp_path / "l.parquet"])
    assert r.exit_code == 0, r.output
    r = cli(["convert", heas[0], "--join", ref, "--join-key", "record_id", "-o", tmp_path / "k.parquet"])
    assert r.exit_code == 0 and "convert --join-key is deprecated and will be removed in the next release; use --join-on" in r.stderr
