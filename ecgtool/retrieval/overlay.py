"""Two ECGs overlaid lead by lead on grid paper (the paper and layout of :mod:`ecgtool.analysis.ecgplot`).

The clinical layout when both hold the 12 standard leads and at least 10 s: four columns of
2.5 s (I, II, III | aVR, aVL, aVF | V1–V3 | V4–V6) over a 10 s lead II rhythm strip, 25 mm/s,
10 mm/mV. Otherwise the leads they share, one per row. The current tracing is black, the baseline
blue; the baseline is resampled to the current one's rate (linear interpolation) when they differ.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ecgtool.analysis import ecgplot as P

CURRENT, BASELINE = "#111111", "#1f5fbf"


def _resample(sig: np.ndarray, fs: float, to_fs: float) -> np.ndarray:
    if abs(fs - to_fs) < 1e-9:
        return sig
    n = int(round(sig.shape[-1] * to_fs / fs))
    t_new = np.arange(n) / to_fs
    t_old = np.arange(sig.shape[-1]) / fs
    return np.stack([np.interp(t_new, t_old, row) for row in sig]).astype(np.float32)


def _draw(ax, t: np.ndarray, y: np.ndarray, base: float, color: str, width: float) -> None:
    y = np.nan_to_num(y - np.nanmedian(y) if y.size else y)
    y = np.clip(base + y, base - P.CLIP_MV, base + P.CLIP_MV)
    t, y, _ = P._envelope(t, y, np.zeros_like(y), max_points=4 * int(ax.get_position().width * ax.figure.bbox.width) + 4)
    ax.plot(t, y, color=color, linewidth=width, zorder=3, solid_joinstyle="round")


def plot_overlay(current: dict, baseline: dict, path: str | Path, title: str = "", subtitle: str = "") -> Path:
    """Write a PNG of ``current`` and ``baseline`` ({signal (leads, samples), fs, leads, units})."""
    plt = P._plt()
    fs = float(current["fs"])
    a = np.asarray(current["signal"], dtype=np.float32)
    b = _resample(np.asarray(baseline["signal"], dtype=np.float32), float(baseline["fs"]), fs)
    la, lb = list(current["leads"]), list(baseline["leads"])
    shared = [n for n in la if n in lb]
    if not shared:
        raise ValueError("the two ECGs share no lead")
    ia, ib = {n: i for i, n in enumerate(la)}, {n: i for i, n in enumerate(lb)}
    n = min(a.shape[-1], b.shape[-1])
    scale = {}
    for sig, d in ((a, current), (b, baseline)):
        scale[id(sig)] = 1.0 if d.get("units", "mV") == "mV" else 0.2  # normalised: 1 SD drawn as 2 mm
    a, b = a * scale[id(a)], b * scale[id(b)]
    standard = all(x in ia and x in ib for col in P.LAYOUT for x in col) and n / fs >= 10.0 - 0.05
    if standard:
        n = int(round(10.0 * fs))
        width_s, height = 10.0, 4 * P.ROW_MV
        fig, ax = P._paper(plt, width_s, height)
        P._grid(ax, width_s, height, minor=ax.mm_per_s > 24.9)
        quarter = int(round(2.5 * fs))
        for c, col in enumerate(P.LAYOUT):
            for r, name in enumerate(col):
                sl = slice(c * quarter, min(n, (c + 1) * quarter))
                base = height - (r + 0.5) * P.ROW_MV
                t = np.arange(sl.start, sl.stop) / fs
                _draw(ax, t, b[ib[name], sl], base, BASELINE, 1.0)
                _draw(ax, t, a[ia[name], sl], base, CURRENT, 1.0)
                ax.text(c * 2.5 + 0.05, base + 0.9, name, fontsize=9, fontweight="bold", zorder=4)
            if c:
                ax.plot([c * 2.5, c * 2.5], [P.ROW_MV * 1.2, height - 0.2], color="black", linewidth=0.8, zorder=4)
        base = 0.5 * P.ROW_MV
        t = np.arange(n) / fs
        _draw(ax, t, b[ib["II"], :n], base, BASELINE, 1.0)
        _draw(ax, t, a[ia["II"], :n], base, CURRENT, 1.0)
        ax.text(0.05, base + 0.9, "II", fontsize=9, fontweight="bold", zorder=4)
    else:
        width_s, height = n / fs, len(shared) * P.ROW_MV
        fig, ax = P._paper(plt, width_s, height)
        P._grid(ax, width_s, height, minor=ax.mm_per_s > 24.9, t_major=P._major_step(ax.mm_per_s))
        t = np.arange(n) / fs
        for r, name in enumerate(shared):
            base = height - (r + 0.5) * P.ROW_MV
            _draw(ax, t, b[ib[name], :n], base, BASELINE, 1.0)
            _draw(ax, t, a[ia[name], :n], base, CURRENT, 1.0)
            ax.text(0.05, base + 0.9, name, fontsize=9, fontweight="bold", zorder=4)
    fig_w, fig_h = fig.get_size_inches()
    fig.suptitle(title, fontsize=12, fontweight="bold", y=1 - 0.08 / fig_h, va="top")
    speed = ax.mm_per_s
    units = "10 mm/mV" if current.get("units", "mV") == "mV" else "normalised signal, 10 mm = 5 SD"
    fig.text(P.SIDE_IN / fig_w, 1 - 0.45 / fig_h, f"{subtitle}   {speed:.2g} mm/s, {units}", fontsize=8.5, va="top")
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
