"""saliency: attention (ECG-FM, as the original) and integrated gradients (any model), tables and PNGs."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from ecgtool.analysis.saliency import attention_saliency, integrated_gradients
from ecgtool.signal.resample import stretch
from ecgtool.models.checkpoint import load_model


@pytest.fixture(scope="module")
def fixtures(reference_dir):
    return reference_dir / "fixtures"


def test_attention_saliency_follows_the_reference_recipe(fixtures):
    """Last-layer head-averaged attention from the original code, max over keys, stretched."""
    model = load_model(fixtures / "ecgfm" / "finetuned.pt")
    ref = np.load(fixtures / "ecgfm" / "io.npz")
    x = torch.from_numpy(ref["x"])
    with torch.inference_mode():
        s = attention_saliency(model, x).numpy()
    expected = stretch(ref["ft_attn_last"].max(axis=2), x.shape[-1])
    assert s.shape == (3, 12, 2500)  # time-step tokens: the same trace for every lead
    for lead in range(12):
        np.testing.assert_allclose(s[:, lead], expected, atol=1e-5)


def test_integrated_gradients_completeness(fixtures):
    """IG attributions sum to logit(x) - logit(0) (up to the Riemann error)."""
    model = load_model(fixtures / "ecgfounder" / "12_lead_reduced.pth").double()
    ref = np.load(fixtures / "ecgfounder" / "io.npz")
    x = torch.from_numpy(ref["x"][:1]).double()
    target = torch.tensor([3])
    a = integrated_gradients(model, x, target, steps=32)
    with torch.no_grad():
        diff = (model.logits(x) - model.logits(torch.zeros_like(x))).gather(1, target[:, None])[:, 0]
    np.testing.assert_allclose(a.sum(dim=(1, 2)).numpy(), diff.numpy(), rtol=0.05, atol=1e-3)


def test_saliency_command_writes_table_and_pngs(cli, fixtures, tmp_path, data_dir):
    ck = tmp_path / "ft.safetensors"
    assert cli(["models", "import", fixtures / "ecgfm" / "finetuned.pt", "-o", ck]).exit_code == 0
    heas = [data_dir / "ptbxl-500" / "records500" / "00000" / f"{i}_hr.hea" for i in ("00001", "00009")]
    rec = tmp_path / "rec.parquet"
    assert cli(["convert", *heas, "-o", rec]).exit_code == 0
    out = tmp_path / "sal.parquet"
    res = cli(["saliency", "-m", ck, rec, "--label", "label_2", "--png", tmp_path / "png", "-o", out])
    assert res.exit_code == 0, res.output
    t = pq.read_table(out)
    assert t.column("record_id").to_pylist() == ["00001_hr", "00009_hr"]
    assert t.column("label").to_pylist() == ["label_2", "label_2"]
    sal = np.array(t.column("saliency")[0].as_py())
    sig = np.array(t.column("signal")[0].as_py())
    assert sal.shape == sig.shape == (12, 5000)  # two 5 s windows joined
    assert sal.min() == 0.0 and sal.max() == 1.0
    assert np.allclose(sal[0], sal[5])  # attention: one trace for all leads
    # the picture shows the signal in mV (raw input): PTB-XL amplitudes are a few mV at most
    assert np.abs(sig).max() < 10
    pngs = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert pngs == ["00001_hr.png", "00009_hr.png"]
    assert (tmp_path / "png" / pngs[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gradient_saliency_on_the_cnn_is_per_lead(cli, fixtures, tmp_path, data_dir):
    ck = tmp_path / "f.safetensors"
    assert cli(["models", "import", fixtures / "ecgfounder" / "12_lead_reduced.pth", "-o", ck]).exit_code == 0
    hea = data_dir / "ptbxl-500" / "records500" / "00000" / "00017_hr.hea"
    out = tmp_path / "s.parquet"
    res = cli(["saliency", "-m", ck, hea, "--steps", "4", "-o", out])
    assert res.exit_code == 0, res.output
    t = pq.read_table(out)
    assert t.column("method").to_pylist() == ["gradient"]
    sal = np.array(t.column("saliency")[0].as_py())
    assert sal.shape == (12, 5000) and not np.allclose(sal[0], sal[7])
    res = cli(["saliency", "-m", ck, hea, "--method", "attention", "-o", out])
    assert res.exit_code == 2 and "no attention" in res.output
    res = cli(["saliency", "-m", ck, hea, "--label", "AFIB", "-o", out])
    assert res.exit_code == 2 and "unknown label" in res.output


@pytest.mark.parametrize("leads", [["i"], ["i", "ii"], None])
def test_png_layout_has_room_for_text_and_peaks(data_dir, leads):
    # a one-lead strip used to put the title over the subtitle, cut the colour bar's
    # labels off and clip R waves at the top of the paper
    import wfdb

    from ecgtool.analysis.ecgplot import CLIP_MV, TRACE_COLOR, saliency_figure

    rec = wfdb.rdrecord(str(data_dir / "ludb" / "data" / "1"), channel_names=leads)
    x = rec.p_signal.T.astype(np.float32)
    x = (x - x.mean()) / x.std()  # record z-score: R waves of several SD
    sal = np.abs(x) / np.abs(x).max()
    fig = saliency_figure(x, sal, rec.fs, rec.sig_name, title="1: AF (p = 0.91)",
                          subtitle="gradient saliency, model.safetensors", units="record-zscore")
    try:
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        box = fig.bbox
        texts = [t for t in fig.texts if t.get_text()] + [fig._suptitle]
        cb_ax = fig.axes[-1]
        texts += [t for t in cb_ax.get_xticklabels() if t.get_text()] + [cb_ax.xaxis.label]
        extents = [t.get_window_extent(r) for t in texts]
        for t, e in zip(texts, extents):  # every text inside the figure
            assert e.x0 >= box.x0 - 1 and e.x1 <= box.x1 + 1 and e.y0 >= box.y0 - 1 and e.y1 <= box.y1 + 1, t
        title, subtitle = fig._suptitle.get_window_extent(r), fig.texts[-1].get_window_extent(r)
        assert not title.overlaps(subtitle)
        paper = fig.axes[0]
        assert not title.overlaps(paper.get_window_extent(r)) and not subtitle.overlaps(paper.get_window_extent(r))
        lo, hi = paper.get_ylim()
        traces = [ln for ln in paper.lines if ln.get_color() == TRACE_COLOR]
        assert traces and all(ln.get_color() == TRACE_COLOR for ln in traces)  # the trace is always dark
        ys = np.concatenate([ln.get_ydata() for ln in traces])
        peak = ys.max()
        assert lo <= ys.min() and peak <= hi  # no trace leaves the paper
        assert peak - ys.min() > 1.0  # the real QRS complexes are drawn
        assert peak < hi - 0.1 or peak - ys.min() >= CLIP_MV  # not cut flat by the paper's edge
        assert len(paper.images) == len(traces) + (1 if len(traces) == 13 else 0) or len(paper.images) >= 1
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_long_records_are_pages_at_25_mm_per_s(data_dir, tmp_path):
    # a 10-min CPSC 2021 record used to be one line at 0.35 mm/s: now pages of 10 s at 25 mm/s,
    # the most salient six of them, each trace an envelope that keeps every peak
    import matplotlib.pyplot as plt
    import wfdb
    from PIL import Image

    from ecgtool.analysis.ecgplot import CLIP_MV, TRACE_COLOR, plot_saliency, saliency_figure

    rec = wfdb.rdrecord(str(data_dir / "cpsc2021-sample" / "data_84_1"))
    x = rec.p_signal.T.astype(np.float32)
    n = x.shape[1]
    sal = np.zeros_like(x)
    hot = slice(int(300 * rec.fs), int(310 * rec.fs))  # the salient 10 s: page 31
    sal[:, hot] = 1.0
    paths = plot_saliency(x, sal, rec.fs, rec.sig_name, tmp_path / "r.png", title="data_84_1")
    assert n / rec.fs > 60 and len(paths) == 6 and (tmp_path / "r.p31.png") in paths
    last = f"r.p{int(np.ceil(n / (10 * rec.fs))):02d}.png"  # the final page may be shorter than 10 s
    widths = {Image.open(p).size[0] for p in paths if p.name != last}
    assert len(widths) == 1  # every full page the same paper width: 25 mm/s
    fig = saliency_figure(x[:, hot], sal[:, hot], rec.fs, rec.sig_name, subtitle="page 31 of 52", t0=300.0)
    try:
        paper = fig.axes[0]
        assert abs(paper.mm_per_s - 25.0) < 0.01 and "25 mm/s" in fig.texts[-1].get_text()
        traces = [ln for ln in paper.lines if ln.get_color() == TRACE_COLOR]
        assert len(traces) == 2
        for r, ln in enumerate(traces):
            base = 1.5 * 3.0 if r == 0 else 0.5 * 3.0  # row centres (ROW_MV = 3) from the top
            y = np.clip(x[r, hot] - np.median(x[r, hot]), -CLIP_MV, CLIP_MV)
            np.testing.assert_allclose(ln.get_ydata().max() - base, y.max(), atol=1e-5)
            np.testing.assert_allclose(ln.get_ydata().min() - base, y.min(), atol=1e-5)
    finally:
        plt.close(fig)


def test_single_lead_record_draws_only_its_lead(data_dir, tmp_path):
    """CinC 2017 A00001 (30 s, lead I) zero-filled to 12 leads for a model: one row per page, 3 pages."""
    import wfdb
    from PIL import Image

    from ecgtool.analysis.ecgplot import plot_saliency

    rec = wfdb.rdrecord(str(data_dir / "cinc2017" / "A00001"))
    one = rec.p_signal.T.astype(np.float32)[0]
    x = np.zeros((12, one.size), dtype=np.float32)
    x[0] = one
    sal = np.abs(x) / np.abs(x).max()
    paths = plot_saliency(x, sal, rec.fs, ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5",
                                           "V6"], tmp_path / "A00001.png")
    assert [p.name for p in paths] == ["A00001.p01.png", "A00001.p02.png", "A00001.p03.png"]
    w, h = Image.open(paths[0]).size
    assert h < w / 3  # one lead row, not twelve
