"""ECGs on grid paper with their saliency (matplotlib, Agg backend).

The standard clinical layout for a 12-lead ECG: four columns of 2.5 s (I, II,
III | aVR, aVL, aVF | V1–V3 | V4–V6) over a 10 s lead II rhythm strip, at
25 mm/s and 10 mm/mV, on paper with 1 mm (0.04 s, 0.1 mV) and 5 mm
(0.2 s, 0.5 mV) squares. Other lead sets or lengths are drawn one lead per row
(only the leads the record has), always at 25 mm/s: a record longer than a page
(10 s) is cut into pages, one PNG each; past ``max_pages`` only the most salient
pages are drawn, and the subtitle says which. The trace is always dark; the
saliency is a blue band under it (darker = more salient), which stays apart
from the paper's red grid.
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
PAGE_S = 10.0  # seconds of a page at 25 mm/s
MAX_PAGES = 6  # pages drawn per record at most (the most salient ones)
TRACE_COLOR = "#111111"
BAND_CMAP = "Blues"


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


def _band_colors(plt):
    """Saliency 0..1 -> RGBA: transparent at 0, deepening blue towards 1."""
    cmap = plt.get_cmap(BAND_CMAP)

    def colors(v: np.ndarray) -> np.ndarray:
        v = np.clip(np.asarray(v, dtype=np.float64), 0.0, 1.0)
        rgba = cmap(0.15 + 0.5 * v)  # at most a mid blue: the dark trace stays readable on it
        rgba[..., 3] = 0.8 * v
        return rgba

    return colors


def _trace(ax, t: np.ndarray, y: np.ndarray, s: np.ndarray, colors, base: float):
    """A dark trace over a saliency band the height of its row."""
    y = np.clip(base + y - np.median(y), base - CLIP_MV, base + CLIP_MV)
    pixels = 4 * int(ax.get_position().width * ax.figure.bbox.width) + 4
    if len(t) > 1:
        k = max(1, int(np.ceil(len(s) / (pixels / 4))))  # one band column per pixel or so
        m = len(s) // k
        band = s[: m * k].reshape(m, k).max(axis=1) if m else s
        ax.imshow(colors(band)[None], extent=(t[0], t[0] + m * k / max(len(t) - 1, 1) * (t[-1] - t[0]),
                                               base - ROW_MV / 2 + 0.05, base + ROW_MV / 2 - 0.05),
                  aspect="auto", interpolation="nearest", zorder=1)
    t, y, _ = _envelope(t, y, s, max_points=pixels)
    ax.plot(t, y, color=TRACE_COLOR, linewidth=0.9, zorder=3)


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
                  path: str | Path, title: str = "", subtitle: str = "", units: str = "mV",
                  max_pages: int = MAX_PAGES) -> list[Path]:
    """Write ``signal`` (leads, samples) with its ``saliency`` (same shape, 0..1) as PNG pages.

    One page: ``path``. More: ``NAME.p01.png``, ``NAME.p02.png``, ... (pages of 10 s, numbered by
    their place in the record). Leads that are all zero (absent, zero-filled for the model) are left
    out. Returns the paths written."""
    plt = _plt()
    path = Path(path)
    signal, saliency = np.asarray(signal), np.asarray(saliency)
    present = np.flatnonzero(np.any(signal != 0, axis=-1))
    if len(present) == 0:
        present = np.arange(signal.shape[0])
    leads = [list(leads)[i] for i in present]
    signal, saliency = signal[present], saliency[present]
    n = signal.shape[-1]
    if _standard(leads, n / fs):
        pages = [(0, n)]
        chosen = [0]
    else:
        per = int(round(PAGE_S * fs))
        pages = [(a, min(n, a + per)) for a in range(0, n, per)]
        if len(pages) > 1 and pages[-1][1] - pages[-1][0] < 0.2 * per:  # a short tail joins the page before
            pages[-2:] = [(pages[-2][0], pages[-1][1])]
        chosen = list(range(len(pages)))
        if len(pages) > max_pages:
            score = [float(saliency[:, a:b].mean()) for a, b in pages]
            chosen = sorted(np.argsort(score)[::-1][:max_pages].tolist())
    out = []
    for k in chosen:
        a, b = pages[k]
        note = ""
        if len(pages) > 1:
            note = f"page {k + 1} of {len(pages)} ({a / fs:g}-{b / fs:g} s)"
            if len(chosen) < len(pages):
                note += f"; the {len(chosen)} most salient pages are drawn"
        fig = saliency_figure(signal[:, a:b], saliency[:, a:b], fs, leads, title=title,
                              subtitle=f"{subtitle}   {note}" if note else subtitle, units=units, t0=a / fs)
        dest = path if len(pages) == 1 else path.with_name(f"{path.stem}.p{k + 1:02d}{path.suffix}")
        fig.savefig(dest)
        plt.close(fig)
        out.append(dest)
    return out


def _standard(leads: Sequence[str], seconds: float) -> bool:
    return all(name in leads for col in LAYOUT for name in col) and abs(seconds - 10.0) < 0.05


def saliency_figure(signal: np.ndarray, saliency: np.ndarray, fs: float, leads: Sequence[str],
                    title: str = "", subtitle: str = "", units: str = "mV", t0: float = 0.0):
    """One page (the caller closes it): the clinical layout for 10 s of 12 leads, else one row per lead
    at 25 mm/s (a page of at most about 10 s; ``t0`` is where it starts in the record)."""
    plt = _plt()

    if units != "mV":  # a normalised signal: 1 SD drawn as 2 mm, so QRS complexes fit their row
        signal = signal * 0.2

    colors = _band_colors(plt)
    leads = list(leads)
    n = signal.shape[-1]
    seconds = n / fs
    index = {name: i for i, name in enumerate(leads)}
    if _standard(leads, seconds):
        width_s, rows = 10.0, 4
        height = rows * ROW_MV
        fig, ax = _paper(plt, width_s, height)
        _grid(ax, width_s, height)
        quarter = int(round(2.5 * fs))
        for c, col in enumerate(LAYOUT):
            for r, name in enumerate(col):
                i = index[name]
                sl = slice(c * quarter, min(n, (c + 1) * quarter))
                base = height - (r + 0.5) * ROW_MV
                t = np.arange(sl.start, sl.stop) / fs
                _trace(ax, t, signal[i, sl], saliency[i, sl], colors, base)
                ax.text(c * 2.5 + 0.05, base + 0.9, name, fontsize=9, fontweight="bold", zorder=4)
            if c:
                ax.plot([c * 2.5, c * 2.5], [ROW_MV * 1.0 + 0.2 * ROW_MV, height - 0.2], color="black",
                        linewidth=0.8, zorder=4)
        i = index["II"]
        base = 0.5 * ROW_MV
        _trace(ax, np.arange(n) / fs, signal[i], saliency[i], colors, base)
        ax.text(0.05, base + 0.9, "II", fontsize=9, fontweight="bold", zorder=4)
    else:
        width_s, rows = seconds, len(leads)
        height = rows * ROW_MV
        fig, ax = _paper(plt, width_s, height, max_width_in=1e9)  # 25 mm/s always: pages keep it narrow
        _grid(ax, width_s, height)
        for r, name in enumerate(leads):
            base = height - (r + 0.5) * ROW_MV
            _trace(ax, np.arange(n) / fs, signal[r], saliency[r], colors, base)
            ax.text(0.05, base + 0.9, name, fontsize=9, fontweight="bold", zorder=4)
        for sec in range(int(np.ceil(t0)), int(t0 + seconds) + 1):  # the time in the record, every second
            if 0 < sec - t0 < seconds - 0.3:
                ax.text(sec - t0, -PAD_MV + 0.1, f"{sec} s", fontsize=7, color="#555555", ha="center", zorder=4)
    fig_w, fig_h = fig.get_size_inches()
    fig.suptitle(title, fontsize=12, fontweight="bold", y=1 - 0.08 / fig_h, va="top")
    scale = "25 mm/s, " + ("10 mm/mV" if units == "mV" else f"{units} signal, 10 mm = 5 SD")
    fig.text(SIDE_IN / fig_w, 1 - 0.45 / fig_h, f"{subtitle}   {scale}", fontsize=8.5, va="top")
    from matplotlib.colors import ListedColormap, Normalize

    sm = plt.cm.ScalarMappable(cmap=ListedColormap(colors(np.linspace(0, 1, 256))), norm=Normalize(0.0, 1.0))
    bar_w = min(3.0, 0.3 * fig_w)
    cax = fig.add_axes((1 - (SIDE_IN + bar_w) / fig_w, 0.42 / fig_h, bar_w / fig_w, 0.08 / fig_h))
    cb = fig.colorbar(sm, cax=cax, orientation="horizontal")
    cb.set_label("saliency (low → high)", fontsize=8)
    cb.ax.tick_params(labelsize=7)
    return fig
