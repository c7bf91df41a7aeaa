"""ECG-FM forward speed: fused attention (SDPA) against the explicit-softmax path.

Baseline: the same model with ``SelfAttention.use_sdpa = False`` (explicit
q·kᵀ, softmax, ·v), run side by side in the same process. Prints the median
time per batch of each and their ratio. With ``--fixtures DIR`` it first checks
that the fairseq-signals fixtures are reproduced on the chosen device.

    python bench/bench_ecgfm.py --device cpu --batch 8 --repeats 5
    python bench/bench_ecgfm.py --device cuda --batch 64 --repeats 20 --fixtures ../shared/reference/fixtures/ecgfm
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from ecgtool.models import create_model
from ecgtool.models.ecgfm import SelfAttention


def check_fixtures(fixtures: str, device: torch.device) -> None:
    from ecgtool.models.import_fairseq import load_fairseq_checkpoint

    z = np.load(f"{fixtures}/io.npz")
    x = torch.from_numpy(z["x"]).to(device)
    pre = load_fairseq_checkpoint(f"{fixtures}/pretrained.pt").to(device)
    ft = load_fairseq_checkpoint(f"{fixtures}/finetuned.pt").to(device)
    with torch.no_grad():
        got = {"features": pre.features(x), "pooled": pre.embed(x), "attn_last": pre.attention(x),
               "ft_encoder_out": ft.features(x), "logits": ft.logits(x), "ft_attn_last": ft.attention(x)}
    for k, v in got.items():
        print(f"fixture {k:15s} max abs err on {device}: {np.abs(v.float().cpu().numpy() - z[k]).max():.2e}")


def timed(fn, sync, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ecgfm-base")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--fixtures")
    a = ap.parse_args()
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if a.fixtures:
        check_fixtures(a.fixtures, dev)
    torch.manual_seed(0)
    dtype = getattr(torch, a.dtype)
    m = create_model(a.model, pretraining=False).eval().to(dev, dtype)
    x = torch.randn(a.batch, 12, 2500, device=dev, dtype=dtype)
    res = {}
    with torch.inference_mode():
        for name, sdpa in (("explicit (baseline)", False), ("sdpa", True)):
            SelfAttention.use_sdpa = sdpa
            m.embed(x)  # warm-up
            res[name] = timed(lambda: m.embed(x), sync, a.repeats)
        SelfAttention.use_sdpa = False
        ref = m.embed(x).float()
        SelfAttention.use_sdpa = True
        diff = float((m.embed(x).float() - ref).abs().max())
    base = res["explicit (baseline)"]
    print(f"{a.model} embed, batch {a.batch} x 12 x 2500, {a.dtype}, {dev}"
          f"{' (' + torch.cuda.get_device_name(dev) + ')' if dev.type == 'cuda' else ''}, "
          f"torch {torch.__version__}, median of {a.repeats}")
    for name, t in res.items():
        print(f"  {name:20s} {t * 1000:9.1f} ms/batch  {a.batch / t:9.1f} segments/s  ratio {base / t:5.2f}x")
    print(f"  max abs difference sdpa vs explicit: {diff:.2e}")


if __name__ == "__main__":
    main()
