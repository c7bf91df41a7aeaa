"""Retrieval benchmarks: index build and search on synthetic embeddings; retrieval quality on real ECGs.

    python bench/bench_retrieval.py synthetic [--n 1000000] [--dim 768] [--threads 2]
    python bench/bench_retrieval.py real [--data ../shared/data] [--work out/bench-retrieval]

synthetic (seeded): N vectors of dimension D drawn from 256 clusters in a 32-dimensional latent
space, mapped linearly to D dimensions, plus isotropic noise (std 0.1 per dimension). The default
model's PTB-XL embeddings have 97% of their variance in 16 components, so this is the harder case.
Queries are 1,000 further draws (not indexed). Reported:

* HNSW (faiss, through ecgtool.retrieval) build time and memory (resident set before/after, file size);
* query latency, k = 10, one query at a time on ``--threads`` threads, and recall@10 against exact
  search, for several ``ef``;
* exact search on 100,000 of the vectors: ecgtool's blocked search against a NumPy loop over rows
  (the baseline), per query, side by side;
* peak memory of ``search`` (exact index of 100,000 rows) for query tables of 10,000 and 50,000 rows:
  it should not grow with the query table.

real: windows of PTB-XL (500 records) and LUDB (200 records), 5 s each, embedded with the default
model and with a random-init encoder of the same architecture; the share of windows whose nearest
other window (search --exclude-self -k 1) is a window of the same record. And a CinC 2017 kNN vote
(train split indexed, test split queried; k = 10) against the default model's own prediction,
macro F1 over N, A, O.

Medians over the repeated measurements; the commands are printed with the results (Markdown).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from _timing import CHILD_ENV  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def synth(n: int, seed: int, d: int = 768, latent: int = 32, clusters: int = 256, noise: float = 0.1,
          chunk: int = 100_000) -> np.ndarray:
    g = np.random.default_rng(12345)  # the distribution (same for base and queries)
    centres = (g.normal(size=(clusters, latent)) * 1.5).astype(np.float32)
    W = (g.normal(size=(latent, d)) / np.sqrt(latent)).astype(np.float32)
    r = np.random.default_rng(seed)  # the draws
    out = np.empty((n, d), dtype=np.float32)
    for i in range(0, n, chunk):
        m = min(chunk, n - i)
        z = centres[r.integers(0, clusters, m)] + r.normal(size=(m, latent)).astype(np.float32)
        out[i:i + m] = z @ W + noise * r.normal(size=(m, d)).astype(np.float32)
    return out


def numpy_row_loop(X: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """The baseline: cosine distance to every row, one row at a time, then the k smallest."""
    qn = q / np.linalg.norm(q)
    d = np.empty(X.shape[0], dtype=np.float32)
    for i in range(X.shape[0]):
        x = X[i]
        d[i] = 1.0 - np.dot(qn, x) / np.linalg.norm(x)
    part = np.argpartition(d, k)[:k]
    return part[np.argsort(d[part])]


def table(rows, head) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def write_embeddings(path: str, X: np.ndarray, model: str = "synthetic") -> None:
    import pyarrow as pa

    from ecgtool.io import TableMeta, TableWriter

    d = X.shape[1]
    schema = pa.schema([pa.field("record_id", pa.string()), pa.field("embedding", pa.list_(pa.float32(), d))])
    meta = TableMeta(kind="embeddings", info={"model": model, "embedding": {"dim": d, "pool": "mean"}})
    with TableWriter(path, schema, meta) as w:
        for i in range(0, len(X), 8192):
            part = X[i:i + 8192]
            emb = pa.FixedSizeListArray.from_arrays(pa.array(part.reshape(-1)), d)
            w.write(pa.record_batch([pa.array([f"r{j}" for j in range(i, i + len(part))]), emb],
                                    schema=schema))


def bench_synthetic(a) -> str:
    from ecgtool.retrieval.exact import exact_search
    from ecgtool.retrieval.index import load_index, new_index, set_threads

    set_threads(a.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    lines = [f"### retrieval, synthetic ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
             f"{len(os.sched_getaffinity(0))} CPUs usable, {a.threads} threads, load average before: "
             f"{os.getloadavg()[0]:.1f})", "",
             f"`python bench/bench_retrieval.py synthetic --n {a.n} --dim {a.dim} --threads {a.threads} --parts {a.parts}`", ""]
    parts = set(a.parts.split(","))
    t0 = time.perf_counter()
    X = synth(a.n if "hnsw" in parts else min(a.n, 100_000), 1, a.dim)  # the first 100,000 rows are the same
    Q = synth(a.queries, 2, a.dim)
    gen_s = time.perf_counter() - t0
    print(f"generated {len(X)} x {a.dim} in {gen_s:.0f} s", file=sys.stderr, flush=True)
    if "hnsw" in parts:
        lines += _hnsw_part(a, X, Q)
    if "exact" in parts or "memory" in parts:
        lines += _exact_part(a, X, Q, parts)
    return "\n".join(lines)


def _hnsw_part(a, X, Q) -> list[str]:
    from ecgtool.retrieval.exact import exact_search
    from ecgtool.retrieval.index import load_index, new_index, set_threads

    lines = []

    # ground truth: exact search (batched)
    t0 = time.perf_counter()
    _, gt = exact_search(X, Q, 10, "cosine", block=256)
    exact_all_s = time.perf_counter() - t0
    print(f"exact ground truth in {exact_all_s:.0f} s", file=sys.stderr, flush=True)

    # HNSW build through ecgtool's index
    import pyarrow as pa

    rss0 = rss_mb()
    idx = new_index("hnsw", "cosine", a.dim, {"model": "synthetic", "embedding": {"dim": a.dim}},
                    {"M": a.M, "ef_construction": a.efc, "ef_search": 128})
    t0 = time.perf_counter()
    step = 100_000
    for i in range(0, a.n, step):
        ids = pa.array([f"r{j}" for j in range(i, min(a.n, i + step))])
        idx.add(X[i:i + step], pa.table({"record_id": ids}))
        print(f"  added {min(a.n, i + step)} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    build_s = time.perf_counter() - t0
    rss1 = rss_mb()
    with tempfile.TemporaryDirectory(dir=a.tmp) as tmp:
        path = f"{tmp}/synthetic.ecgidx"
        t0 = time.perf_counter()
        idx.save(path)
        save_s = time.perf_counter() - t0
        size_mb = os.path.getsize(path) / 2**20
        del idx
        t0 = time.perf_counter()
        idx = load_index(path)
        load_s = time.perf_counter() - t0
    lines += [f"**HNSW build** (faiss {idx.header.get('faiss_version')}, M = {a.M}, efConstruction = {a.efc}): "
              f"{a.n:,} x {a.dim} in {build_s:.0f} s ({a.n / build_s:,.0f} vectors/s); resident memory "
              f"{rss0:,.0f} MB before (the vectors: {X.nbytes / 2**20:,.0f} MB), {rss1:,.0f} MB after "
              f"(+{rss1 - rss0:,.0f} MB for the index); index file {size_mb:,.0f} MB, written in {save_s:.1f} s, "
              f"loaded (CRC-checked) in {load_s:.1f} s.", ""]

    # latency and recall, one query at a time
    rows = []
    best = None
    set_threads(a.threads)
    for ef in (16, 32, 64, 128, 256):
        for q in Q[:20]:  # warm-up
            idx.search(q[None], 10, ef=ef)
        lat = []
        found = np.empty((len(Q), 10), dtype=np.int64)
        for i, q in enumerate(Q):
            t = time.perf_counter()
            _, I = idx.search(q[None], 10, ef=ef)
            lat.append(time.perf_counter() - t)
            found[i] = I[0]
        recall = np.mean([len(set(found[i]) & set(gt[i])) / 10 for i in range(len(Q))])
        med, p95 = np.median(lat) * 1e3, np.percentile(lat, 95) * 1e3
        rows.append([ef, f"{med:.2f}", f"{p95:.2f}", f"{recall:.4f}"])
        if best is None and recall >= 0.95:
            best = (ef, med, recall)
        print(f"  ef {ef}: {med:.2f} ms, recall {recall:.4f}", file=sys.stderr, flush=True)
    lines += [f"Query latency, k = 10, one query at a time ({len(Q)} queries), recall@10 against exact search:", "",
              table(rows, ["ef", "median ms/query", "p95 ms", "recall@10"]), ""]
    exact_q = exact_all_s / len(Q) * 1e3
    lines += [f"Exact search over all {a.n:,} (ecgtool, batched 256 queries at a time): {exact_q:.1f} ms per query."]
    if best:
        lines += [f"Target (≤ 5 ms, recall@10 ≥ 0.95): ef = {best[0]} gives {best[1]:.2f} ms at recall "
                  f"{best[2]:.4f} — {'met' if best[1] <= 5 else 'NOT met'}.", ""]
    del idx
    return lines


def _exact_part(a, X, Q, parts) -> list[str]:
    lines = []
    # exact search on 100,000: ecgtool vs a NumPy loop over rows
    n_ex = min(100_000, a.n)
    Xe = np.ascontiguousarray(X[:n_ex])
    del X
    if "exact" in parts:
        lines += _exact_speed(a, Xe, Q, n_ex)
    if "memory" in parts:
        lines += _memory(a, Xe, n_ex)
    return lines


def _exact_speed(a, Xe, Q, n_ex) -> list[str]:
    lines = []
    nq_loop = 10
    loop_t = []
    for q in Q[:nq_loop]:
        t = time.perf_counter()
        ref = numpy_row_loop(Xe, q, 10)
        loop_t.append(time.perf_counter() - t)
    ours1, oursb = [], []
    from ecgtool.retrieval.exact import prepare, search_prepared

    base = prepare(Xe, "cosine")  # what an exact index stores
    agree = 0
    for i, q in enumerate(Q[:nq_loop]):
        t = time.perf_counter()
        _, I = search_prepared(base, prepare(q[None], "cosine"), 10, "cosine")
        ours1.append(time.perf_counter() - t)
    for _ in range(3):
        t = time.perf_counter()
        _, I = search_prepared(base, prepare(Q, "cosine"), 10, "cosine", block=256)
        oursb.append((time.perf_counter() - t) / len(Q))
    refs = [numpy_row_loop(Xe, q, 10) for q in Q[:3]]
    agree = np.mean([len(set(refs[i]) & set(I[i])) / 10 for i in range(3)])
    lm, o1, ob = np.median(loop_t) * 1e3, np.median(ours1) * 1e3, np.median(oursb) * 1e3
    lines += [f"Exact search on {n_ex:,} x {a.dim} (k = 10; the same neighbours: {agree:.0%}):", "",
              table([["NumPy loop over rows (baseline)", f"{lm:.1f}", "1.0"],
                     ["ecgtool exact, one query at a time", f"{o1:.2f}", f"{lm / o1:.0f}"],
                     [f"ecgtool exact, {len(Q)} queries in blocks of 256", f"{ob:.3f}", f"{lm / ob:.0f}"]],
                    ["search", "ms per query (median)", "× baseline"]), ""]
    return lines


def _memory(a, Xe, n_ex) -> list[str]:
    lines = []
    # memory of search: bounded by the index, not the query table
    with tempfile.TemporaryDirectory(dir=a.tmp) as tmp:
        write_embeddings(f"{tmp}/base.parquet", Xe)
        subprocess.run([sys.executable, "-m", "ecgtool", "-q", "index", f"{tmp}/base.parquet", "-o",
                        f"{tmp}/base.ecgidx", "--kind", "exact"], check=True, env=CHILD_ENV)
        mem = []
        for nq in (10_000, 50_000):
            write_embeddings(f"{tmp}/q{nq}.parquet", synth(nq, 3, a.dim))
            # VmHWM: this process's own peak (ru_maxrss would carry the parent's over fork and exec)
            code = ("import sys\nfrom ecgtool.cli import app\n"
                    "try:\n    app(sys.argv[1:], prog_name='ecgtool')\nexcept SystemExit:\n    pass\n"
                    "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
            out = subprocess.run([sys.executable, "-c", code, "-q", "search", f"{tmp}/base.ecgidx",
                                  f"{tmp}/q{nq}.parquet", "-k", "10", "-o", f"{tmp}/nb{nq}.parquet"],
                                 check=True, capture_output=True, text=True, env=CHILD_ENV)
            peak = int(out.stdout.strip().splitlines()[-1]) / 1024
            mem.append([f"{nq:,}", f"{nq * a.dim * 4 / 2**20:,.0f}", f"{peak:,.0f}"])
    lines += [f"Peak memory of `ecgtool search` (exact index of {n_ex:,} x {a.dim}, "
              f"{n_ex * a.dim * 4 / 2**20:,.0f} MB of vectors):", "",
              table(mem, ["query rows", "query vectors MB", "peak resident MB"]), ""]
    return lines


# --------------------------------------------------------------------------- real data


def et(*args, **kw):
    cmd = [sys.executable, "-m", "ecgtool", "-q", *map(str, args)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=CHILD_ENV, **kw)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}\n{r.stderr}")
    return r


def random_init_checkpoint(path: Path) -> Path:
    if not path.exists():
        import torch

        import ecgtool
        from ecgtool.models.native import save_checkpoint

        torch.manual_seed(0)
        save_checkpoint(ecgtool.create_model("ecgtool-default"), path)
    return path


def self_record_rate(work: Path, name: str, raw: Path, model_args: list[str]) -> tuple[float, int, int]:
    from ecgtool.io import read_table

    tag = "default" if not model_args else "random"
    emb = work / f"{name}.{tag}.win.parquet"
    if not emb.exists():
        et("embed", raw, "--pool", "none", *model_args, "-o", emb)
    idx = work / f"{name}.{tag}.ecgidx"
    et("index", emb, "--kind", "exact", "-o", idx)
    nb = work / f"{name}.{tag}.nn.parquet"
    et("search", idx, emb, "-k", "1", "--exclude-self", "-o", nb)
    t, _ = read_table(nb)
    q = np.array(t.column("query_record_id").to_pylist())
    r = np.array(t.column("record_id").to_pylist())
    # a record with one window has no other window of its own to find
    e, _ = read_table(emb)
    ids, counts = np.unique(np.array(e.column("record_id").to_pylist()), return_counts=True)
    multi = set(ids[counts > 1])
    keep = np.array([x in multi for x in q])
    return float(np.mean(q[keep] == r[keep])), int(keep.sum()), len(ids)


def bench_real(a) -> str:
    from sklearn.metrics import f1_score

    from ecgtool.io import read_table
    from ecgtool.io.stream import open_table

    data = Path(a.data)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    rnd = random_init_checkpoint(work / "random-init.safetensors")
    lines = [f"### retrieval, real ECGs ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
             f"`python bench/bench_retrieval.py real --data {a.data}`", ""]
    raws = {}
    ptb = work / "ptbxl.raw.parquet"
    if not ptb.exists():
        et("convert", data / "ptbxl-500" / "records100", "--join", data / "ptbxl-500" / "ptbxl_database.csv",
           "-o", ptb)
    raws["PTB-XL (500 records, 100 Hz copies)"] = ptb
    ludb = work / "ludb.raw.parquet"
    if not ludb.exists():
        et("convert", data / "ludb" / "data", "-o", ludb)
    raws["LUDB (200 records)"] = ludb
    rows = []
    for label, raw in raws.items():
        name = raw.name.split(".")[0]
        d = self_record_rate(work, name, raw, [])
        r = self_record_rate(work, name, raw, ["-m", rnd])
        rows.append([label, f"{d[1]:,}", f"{d[0]:.3f}", f"{r[0]:.3f}", f"{1 / max(d[1] - 1, 1):.4f}"])
        print(label, d, r, file=sys.stderr, flush=True)
    lines += ["Nearest other 5 s window (exact cosine search, `search --exclude-self -k 1`) from the same record:", "",
              table(rows, ["windows of", "query windows", "default model", "random-init encoder (same architecture)",
                           "chance (1 / windows)"]), ""]

    # CinC 2017: kNN vote (train split indexed) vs the model's own prediction, on the test split
    splits = ROOT / "examples" / "default-model" / "splits.csv"
    ref = work / "cinc2017_reference.csv"
    ref.write_text("record,label\n" + (data / "cinc2017" / "REFERENCE.csv").read_text())
    sp = dict(line.split(",") for line in splits.read_text().splitlines()[1:])
    emb = work / "cinc.emb.parquet"
    if not emb.exists():
        lst = work / "cinc_inputs.txt"
        lst.write_text("\n".join(str(data / "cinc2017" / f"{r}.hea") for r, s in sp.items()
                                 if s in ("train", "test") and r.startswith("A")) + "\n")
        raw = work / "cinc.raw.parquet"
        with open(lst) as fh:
            et("convert", "-", "--join", ref, "--join", splits, "-o", raw, stdin=fh)
        seg = work / "cinc.seg.parquet"
        et("preprocess", "--preset", "ecgtool-default", "--rename", "ECG=I", raw, "-o", seg)
        et("embed", seg, "--batch-size", "64", "-o", emb)
    if not (work / "cinc.pred.parquet").exists():
        # the model's own prediction: the test split only
        seg = work / "cinc.seg.parquet"
        st, _ = read_table(seg)
        with open_table(seg) as rd:
            smeta = rd.meta
        import pyarrow as pa

        from ecgtool.io import TableWriter

        with TableWriter(work / "cinc.test.seg.parquet", st.schema, smeta) as w:
            w.write(st.filter(pa.array(np.array(st.column("split").to_pylist()) == "test")))
        del st
        et("predict", work / "cinc.test.seg.parquet", "--batch-size", "64", "-o", work / "cinc.pred.parquet")
    e, _ = read_table(emb)
    split = np.array(e.column("split").to_pylist())
    import pyarrow as pa

    from ecgtool.io import TableWriter
    from ecgtool.io.stream import open_table

    with open_table(emb) as rd:
        meta = rd.meta
    for s in ("train", "test"):
        with TableWriter(work / f"cinc.{s}.emb.parquet", e.schema, meta) as w:
            w.write(e.filter(pa.array(split == s)))
    et("index", work / "cinc.train.emb.parquet", "--kind", "exact", "-o", work / "cinc.train.ecgidx")
    out = []
    truth_tab = e.filter(pa.array(split == "test"))
    truth = dict(zip(truth_tab.column("record_id").to_pylist(), truth_tab.column("label").to_pylist()))
    ids = list(truth)
    y = np.array([truth[i] for i in ids])
    p, _ = read_table(work / "cinc.pred.parquet")
    cls = {"normal": "N", "AF": "A", "other rhythm": "O", "noisy": "~"}
    P = np.column_stack([np.array(p.column(c).to_pylist(), dtype=float) for c in cls])
    own = dict(zip(p.column("record_id").to_pylist(), np.array(list(cls.values()))[P.argmax(1)]))
    f_own = f1_score(y, [own[i] for i in ids], labels=["N", "A", "O"], average="macro")
    for k in (1, 5, 10, 20):
        for weighted in (False, True):
            v = work / f"cinc.vote.k{k}{'w' if weighted else ''}.parquet"
            et("search", work / "cinc.train.ecgidx", work / "cinc.test.emb.parquet", "-k", k, "--vote", "label",
               *(["--weighted"] if weighted else []), "-o", v)
            vt, _ = read_table(v)
            pred = dict(zip(vt.column("query_record_id").to_pylist(), vt.column("knn_label").to_pylist()))
            f = f1_score(y, [pred.get(i) or "N" for i in ids], labels=["N", "A", "O"], average="macro")
            out.append([k, "1/distance" if weighted else "one vote each", f"{f:.3f}"])
    lines += [f"CinC 2017, test split of `examples/default-model/splits.csv` ({len(ids)} records; the "
              f"{int((split == 'train').sum())} train-split records indexed), macro F1 over N, A, O:", "",
              table(out + [["–", "default model's own prediction (most probable of its 4 CinC outputs)",
                            f"{f_own:.3f}"]], ["k", "vote", "macro F1"]), ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("synthetic")
    s.add_argument("--n", type=int, default=1_000_000)
    s.add_argument("--dim", type=int, default=768)
    s.add_argument("--queries", type=int, default=1000)
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--M", type=int, default=32)
    s.add_argument("--efc", type=int, default=80)
    s.add_argument("--tmp", default=None)
    s.add_argument("--parts", default="hnsw,exact,memory", help="comma-separated: hnsw, exact, memory")
    r = sub.add_parser("real")
    r.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    r.add_argument("--work", default=str(ROOT / "out" / "bench-retrieval"))
    a = p.parse_args()
    print(bench_synthetic(a) if a.what == "synthetic" else bench_real(a))


if __name__ == "__main__":
    main()
