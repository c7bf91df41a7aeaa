"""Zero-phase filters along the last axis (second-order sections, ``sosfiltfilt``).

* :func:`bandpass`: Butterworth band-pass (order per edge, as ``scipy.signal.butter``).
* :func:`bandpass_steps`: a band-pass of one of three designs: ``butter`` (one
  Butterworth band-pass, ECGFounder), ``butter-hp-lp`` (a Butterworth high-pass
  then a Butterworth low-pass of the same order, ST-MEM and ECG-JEPA) or ``fir``
  (``firwin`` with a Hamming window, ``int(0.3 * fs)`` taps made odd, run with
  ``filtfilt``: biosppy's FIR band-pass, HuBERT-ECG).
* :func:`notch`: the ``iirnotch`` design (quality factor Q) as second-order sections.
* :func:`highpass`: Butterworth high-pass (baseline-wander removal).
* :func:`median_baseline`: subtract a running median of ``kernel`` samples
  (zero-padded at the ends, as ``scipy.signal.medfilt``); ECGFounder uses
  ``int(0.4 * fs) + 1`` samples.

All functions accept (..., samples) arrays and filter every row at once.
"""

from __future__ import annotations

import numpy as np


def _scipy_signal():
    # scipy.signal takes about a second to import: only load it when filtering
    from scipy import signal

    return signal


def _nyquist_check(fs: float, *freqs: float) -> None:
    for f in freqs:
        if not 0 < f < fs / 2:
            raise ValueError(f"{f} Hz is not between 0 and the Nyquist frequency ({fs / 2} Hz) at {fs} Hz")


def bandpass_sos(fs: float, low: float, high: float, order: int = 4) -> np.ndarray:
    _nyquist_check(fs, low, high)
    return _scipy_signal().butter(order, [low, high], btype="bandpass", fs=fs, output="sos")


def highpass_sos(fs: float, cutoff: float, order: int = 4) -> np.ndarray:
    _nyquist_check(fs, cutoff)
    return _scipy_signal().butter(order, cutoff, btype="highpass", fs=fs, output="sos")


def lowpass_sos(fs: float, cutoff: float, order: int = 4) -> np.ndarray:
    _nyquist_check(fs, cutoff)
    return _scipy_signal().butter(order, cutoff, btype="lowpass", fs=fs, output="sos")


def notch_sos(fs: float, freq: float, q: float = 30.0) -> np.ndarray:
    _nyquist_check(fs, freq)
    b, a = _scipy_signal().iirnotch(freq, q, fs=fs)
    return _scipy_signal().tf2sos(b, a)


def _padlen(sos: np.ndarray) -> int:
    # scipy's default for sosfiltfilt
    n_sections = sos.shape[0]
    zeros = min(int((sos[:, 2] == 0).sum()), int((sos[:, 5] == 0).sum()))
    return 3 * (2 * n_sections + 1 - zeros)


def filtfilt(x: np.ndarray, sos: np.ndarray) -> np.ndarray:
    """Zero-phase SOS filtering along the last axis (short rows: shorter padding)."""
    n = x.shape[-1]
    padlen = min(_padlen(sos), max(n - 1, 0))
    if n < 2:
        return np.array(x, dtype=np.float64)
    return _scipy_signal().sosfiltfilt(sos, x, axis=-1, padlen=padlen)


BANDPASS_DESIGNS = ("butter", "butter-hp-lp", "fir")


def fir_bandpass_taps(fs: float, low: float, high: float) -> np.ndarray:
    """biosppy's FIR band-pass: ``int(0.3 * fs)`` taps (made odd), Hamming window."""
    _nyquist_check(fs, low, high)
    n = int(0.3 * fs)
    n += 1 - n % 2
    return _scipy_signal().firwin(n, [low / (fs / 2), high / (fs / 2)], pass_zero=False)


def bandpass_steps(fs: float, low: float, high: float, order: int = 4, design: str = "butter") -> list:
    """Filter steps (``("sos", sos)`` or ``("fir", taps)``) for :func:`apply_step`."""
    if design == "butter":
        return [("sos", bandpass_sos(fs, low, high, order))]
    if design == "butter-hp-lp":
        return [("sos", highpass_sos(fs, low, order)), ("sos", lowpass_sos(fs, high, order))]
    if design == "fir":
        return [("fir", fir_bandpass_taps(fs, low, high))]
    raise ValueError(f"unknown band-pass design {design!r} (choose {', '.join(BANDPASS_DESIGNS)})")


def fir_filtfilt(x: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Zero-phase FIR filtering (``filtfilt`` with a = [1], scipy's default odd padding, shorter for short rows)."""
    n = x.shape[-1]
    padlen = min(3 * len(taps), max(n - 1, 0))
    return _scipy_signal().filtfilt(taps, [1.0], x, axis=-1, padlen=padlen)


def apply_step(x: np.ndarray, kind: str, arg) -> np.ndarray:
    """One filter step: ``sos`` (sosfiltfilt), ``fir`` (filtfilt) or ``median`` (baseline removal)."""
    if kind == "sos":
        return filtfilt(x, arg)
    if kind == "fir":
        return fir_filtfilt(x, arg)
    if kind == "median":
        return x - median_baseline(x, arg)
    raise ValueError(f"unknown filter step {kind!r}")


def bandpass(x: np.ndarray, fs: float, low: float, high: float, order: int = 4) -> np.ndarray:
    return filtfilt(x, bandpass_sos(fs, low, high, order))


def highpass(x: np.ndarray, fs: float, cutoff: float, order: int = 4) -> np.ndarray:
    return filtfilt(x, highpass_sos(fs, cutoff, order))


def notch(x: np.ndarray, fs: float, freq: float, q: float = 30.0) -> np.ndarray:
    return filtfilt(x, notch_sos(fs, freq, q))


def median_kernel(fs: float, seconds: float = 0.4) -> int:
    """ECGFounder's kernel: ``int(seconds * fs) + 1``, made odd."""
    k = int(seconds * fs) + 1
    return k if k % 2 == 1 else k + 1


def median_baseline(x: np.ndarray, kernel: int) -> np.ndarray:
    """The running median of ``kernel`` samples along the last axis (zero-padded ends)."""
    from scipy.ndimage import median_filter

    x = np.asarray(x, dtype=np.float64)
    rows = x.reshape(-1, x.shape[-1])
    out = np.empty_like(rows)
    # one 1-D call per lead: scipy's 1-D running median is ~30x faster than the N-D rank filter
    for i in range(rows.shape[0]):
        median_filter(rows[i], size=kernel, mode="constant", cval=0.0, output=out[i])
    return out.reshape(x.shape)


def remove_median_baseline(x: np.ndarray, fs: float, seconds: float = 0.4) -> np.ndarray:
    return x - median_baseline(x, median_kernel(fs, seconds))
