"""ECGs on grid paper, coloured by saliency (matplotlib, Agg backend).

The standard clinical layout for a 12-lead ECG: four columns of 2.5 s (I, II,
III | aVR, aVL, aVF | V1–V3 | V4–V6) over a 10 s lead II rhythm strip, at
25 mm/s and 10 mm/mV, on paper with 1 mm (0.04 s, 0.1 mV) and 5 mm
(0.2 s, 0.5 mV) squares. Other lead sets or lengths are drawn one lead per row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

LAYOUT = (("I", "II", "III"), ("aVR", "aVL", "aVF"), ("V1", "V2", "V3"), ("V4", "V5", "V6"))
ROW_MV = 3.0  # height of one row in mV (30 mm)
CLIP_MV = 0.8 * ROW_MV  # a trace is clipped this far from its row's baseline
PAD_MV = 1.0  # paper above the top row and below the bottom one: CLIP_MV - ROW_MV / 2 < PAD_MV
TOP_IN, BOTTOM_IN, SIDE_IN = 0.75, 0.7, 0.2  # margins (inches): title and subtitle; colour bar


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(ax, width_s: float, height_mv: float, minor: bool = True, t_major: float = 0.2) -> None:
    """Paper from -PAD_MV to height_mv + PAD_MV, so the top and bottom rows have headroom.

    Lines are drawn as two collections (one per weight), not one artist per line:
    a 10 min record has 15,000 of them. ``minor=False`` leaves out the 1 mm squares
    (for paper squeezed below 25 mm/s, where they would fill the page), and
    ``t_major`` spaces the vertical major lines further apart there."""
    from matplotlib.collections import LineCollection

    top = height_mv + PAD_MV
    ts = np.arange(0, width_s + 1e-9, 0.04 if minor else t_major)
    vs = np.arange(-PAD_MV, top + 1e-9, 0.1)
    t_is_major = np.abs(ts / t_major - np.round(ts / t_major)) < 1e-6
    v_major = np.abs(vs / 0.5 - np.round(vs / 0.5)) < 1e-6
    for major, color, width in ((False, "#f4c7c3", 0.4), (True, "#e06666", 0.8)):
        if not major and not minor:
            continue
        sel_t, sel_v = ts[t_is_major == major], vs[v_major == major]
        lines = [((t, -PAD_MV), (t, top)) for t in sel_t] + [((0, v), (width_s, v)) for v in sel_v]
        ax.add_collection(LineCollection(lines, colors=color, linewidths=width, zorder=0))
    ax.set_xlim(0, width_s)
    ax.set_ylim(-PAD_MV, height_mv + PAD_MV)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _trace(ax, t: np.ndarray, y: np.ndarray, s: np.ndarray, cmap, norm, base: float):
    from matplotlib.collections import LineCollection

    y = np.clip(base + y - np.median(y), base - CLIP_MV, base + CLIP_MV)
    t, y, s = _envelope(t, y, s, max_points=4 * int(ax.get_position().width * ax.figure.bbox.width) + 4)

    pts = np.stack([t, y], axis=1)
    segs = np.stack([pts[:-1], pts[1:]], axis=1)
    lc = LineCollection(segs, cmap=cmap, norm=norm, linewidths=1.1, zorder=3)
    lc.set_array(0.5 * (s[:-1] + s[1:]))
    ax.add_collection(lc)
    return lc


def _envelope(t: np.ndarray, y: np.ndarray, s: np.ndarray, max_points: int):
    """At most about ``max_points`` points for a trace that has more samples than the
    picture has pixels: the minimum and the maximum of each run of samples, in time
    order (so every QRS peak stays drawn), with the run's highest saliency."""
    n = len(t)
    if n <= max_points:
        return t, y, s
    k = int(np.ceil(2 * n / max_points))
    m = n // k
    yy = y[: m * k].reshape(m, k)
    lo, hi = yy.argmin(axis=1), yy.argmax(axis=1)
    first, second = np.minimum(lo, hi), np.maximum(lo, hi)
    idx = (np.arange(m) * k)[:, None] + np.stack([first, second], axis=1)
    sal = np.repeat(s[: m * k].reshape(m, k).max(axis=1), 2)
    idx = idx.ravel()
    return t[idx], y[idx], sal


def _major_step(mm_per_s: float) -> float:
    """Seconds between vertical major lines: 0.2 s at 25 mm/s, a power of ten times
    that on squeezed paper (so the lines stay apart)."""
    if mm_per_s > 24.9:
        return 0.2
    return 0.2 * 10 ** int(np.ceil(np.log10(25.0 / mm_per_s)))


def _paper(plt, width_s: float, height_mv: float, min_width_in: float = 6.0, max_width_in: float = 30.0):
    """A figure whose margins are fixed in inches (so a one-lead strip has room for its
    title, subtitle and colour bar) around paper at 25 mm/s and 10 mm/mV (scaled by 1.2)."""
    mm = 1.2 / 25.4
    paper_w = max(min_width_in - 2 * SIDE_IN, min(max_width_in - 2 * SIDE_IN, width_s * 25 * mm))
    paper_h = (height_mv + 2 * PAD_MV) * 10 * mm
    fig_w, fig_h = paper_w + 2 * SIDE_IN, paper_h + TOP_IN + BOTTOM_IN
    fig = plt.figure(figsize=(fig_w, fig_h), dpi=110)
    ax = fig.add_axes((SIDE_IN / fig_w, BOTTOM_IN / fig_h, paper_w / fig_w, paper_h / fig_h))
    ax.mm_per_s = paper_w / mm / width_s  # 25 unless a long record was squeezed into max_width_in
    return fig, ax


def plot_saliency(signal: np.ndarray, saliency: np.ndarray, fs: float, leads: Sequence[str],
                  path: str | Path, title: str = "", subtitle: str = "", units: str = "mV") -> Path:
    """Write a PNG of ``signal`` (leads, samples) coloured by ``saliency`` (same shape, 0..1)."""
    plt = _plt()
    fig = saliency_figure(signal, saliency, fs, leads, title=title, subtitle=subtitle, units=units)
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def saliency_figure(signal: np.ndarray, saliency: np.ndarray, fs: float, leads: Sequence[str],
                    title: str = "", subtitle: str = "", units: str = "mV"):
    """The matplotlib figure that :func:`plot_saliency` writes (the caller closes it)."""
    plt = _plt()
    from matplotlib.colors import Normalize

    if units != "mV":  # a normalised signal: 1 SD drawn as 2 mm, so QRS complexes fit their row
        signal = signal * 0.2

    cmap = plt.get_cmap("coolwarm")
    norm = Normalize(0.0, 1.0)
    leads = list(leads)
    n = signal.shape[-1]
    seconds = n / fs
    index = {name: i for i, name in enumerate(leads)}
    standard = all(name in index for col in LAYOUT for name in col) and abs(seconds - 10.0) < 0.05
    if standard:
        width_s, rows = 10.0, 4
        height = rows * ROW_MV
        fig, ax = _paper(plt, width_s, height)
        _grid(ax, width_s, height, minor=ax.mm_per_s > 24.9)
        quarter = int(round(2.5 * fs))
        for c, col in enumerate(LAYOUT):
            for r, name in enumerate(col):
                i = index[name]
                sl = slice(c * quarter, min(n, (c + 1) * quarter))
                base = height - (r + 0.5) * ROW_MV
                t = np.arange(sl.start, sl.stop) / fs
                y = signal[i, sl]
                _trace(ax, t, y, saliency[i, sl], cmap, norm, base)
                ax.text(c * 2.5 + 0.05, base + 0.9, name, fontsize=9, fontweight="bold", zorder=4)
            if c:
                ax.plot([c * 2.5, c * 2.5], [ROW_MV * 1.0 + 0.2 * ROW_MV, height - 0.2], color="black",
                        linewidth=0.8, zorder=4)
        i = index["II"]
        base = 0.5 * ROW_MV
        y = signal[i]
        _trace(ax, np.arange(n) / fs, y, saliency[i], cmap, norm, base)
        ax.text(0.05, base + 0.9, "II", fontsize=9, fontweight="bold", zorder=4)
    else:
        width_s, rows = seconds, len(leads)
        height = rows * ROW_MV
        fig, ax = _paper(plt, width_s, height)
        _grid(ax, width_s, height, minor=ax.mm_per_s > 24.9, t_major=_major_step(ax.mm_per_s))
        for r, name in enumerate(leads):
            base = height - (r + 0.5) * ROW_MV
            y = signal[r]
            _trace(ax, np.arange(n) / fs, y, saliency[r], cmap, norm, base)
            ax.text(0.05, base + 0.9, name, fontsize=9, fontweight="bold", zorder=4)
    fig_w, fig_h = fig.get_size_inches()
    fig.suptitle(title, fontsize=12, fontweight="bold", y=1 - 0.08 / fig_h, va="top")
    speed = fig.axes[0].mm_per_s
    scale = (f"{speed:.0f} mm/s" if speed > 24.9 else
             f"{speed:.2g} mm/s, a line every {_major_step(speed):g} s (a {width_s:g} s record squeezed to fit; "
             "the saliency table holds every sample)") + ", "
    scale += "10 mm/mV" if units == "mV" else f"{units} signal, 10 mm = 5 SD"
    fig.text(SIDE_IN / fig_w, 1 - 0.45 / fig_h, f"{subtitle}   {scale}", fontsize=8.5, va="top")
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=norm)
    bar_w = min(3.0, 0.3 * fig_w)
    cax = fig.add_axes((1 - (SIDE_IN + bar_w) / fig_w, 0.42 / fig_h, bar_w / fig_w, 0.08 / fig_h))
    cb = fig.colorbar(sm, cax=cax, orientation="horizontal")
    cb.set_label("saliency (low → high)", fontsize=8)
    cb.ax.tick_params(labelsize=7)
    return fig
