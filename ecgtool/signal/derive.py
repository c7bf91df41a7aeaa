"""Lead selection, canonical ordering and derivation of the limb leads.

Einthoven and Goldberger relations (all in the same units):

* III = II - I
* aVR = -(I + II) / 2
* aVL = I - II / 2
* aVF = II - I / 2

A lead asked for but neither present nor derivable is filled with zeros and
marked ``False`` in the returned mask (or the record is refused, see
:func:`select_leads`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ecgtool.signal.leads import normalize_leads

# lead -> (coefficient of I, coefficient of II)
DERIVABLE = {
    "III": (-1.0, 1.0),
    "aVR": (-0.5, -0.5),
    "aVL": (1.0, -0.5),
    "aVF": (-0.5, 1.0),
}


class MissingLeads(ValueError):
    """Leads that are absent and cannot be derived."""

    def __init__(self, missing: Sequence[str], have: Sequence[str]):
        self.missing = list(missing)
        self.have = list(have)
        super().__init__(
            f"lead{'s' if len(self.missing) != 1 else ''} {', '.join(self.missing)} missing "
            f"(the record has {', '.join(self.have) or 'no leads'})"
        )


def lead_plan(have: Sequence[str], want: Sequence[str], derive: bool = True) -> list[tuple]:
    """How to build each wanted lead from the leads a record has.

    Returns one entry per wanted lead: ``("copy", i)``, ``("derive", i_I, i_II,
    a, b)`` (a·I + b·II) or ``("missing",)``. Lead names are compared after
    :func:`normalize_leads`, so ``AVR`` and ``avr`` match ``aVR``.
    """
    have = normalize_leads(have)
    index = {}
    for i, name in enumerate(have):
        index.setdefault(name, i)
    plan: list[tuple] = []
    for name in normalize_leads(want):
        if name in index:
            plan.append(("copy", index[name]))
        elif derive and name in DERIVABLE and "I" in index and "II" in index:
            a, b = DERIVABLE[name]
            plan.append(("derive", index["I"], index["II"], a, b))
        elif name == "aVR" and "-aVR" in index:
            plan.append(("negate", index["-aVR"]))
        else:
            plan.append(("missing",))
    return plan


def apply_plan(x: np.ndarray, plan: list[tuple]) -> tuple[np.ndarray, np.ndarray]:
    """Apply :func:`lead_plan` to ``x`` of shape (..., leads, samples).

    Returns the new array (..., len(plan), samples) and a bool mask per
    output lead (``False`` = zero-filled).
    """
    out_shape = x.shape[:-2] + (len(plan), x.shape[-1])
    idx = [p[1] if p[0] == "copy" else -1 for p in plan]
    if all(i >= 0 for i in idx):
        if idx == list(range(x.shape[-2])):
            return x, np.ones(len(plan), dtype=bool)
        return x[..., idx, :], np.ones(len(plan), dtype=bool)
    out = np.zeros(out_shape, dtype=x.dtype)
    mask = np.zeros(len(plan), dtype=bool)
    for k, p in enumerate(plan):
        if p[0] == "copy":
            out[..., k, :] = x[..., p[1], :]
        elif p[0] == "derive":
            _, i1, i2, a, b = p
            out[..., k, :] = a * x[..., i1, :] + b * x[..., i2, :]
        elif p[0] == "negate":
            out[..., k, :] = -x[..., p[1], :]
        else:
            continue
        mask[k] = True
    return out, mask


def select_leads(
    x: np.ndarray,
    have: Sequence[str],
    want: Sequence[str],
    derive: bool = True,
    missing: str = "zero",
) -> tuple[np.ndarray, np.ndarray]:
    """Reorder ``x`` (leads, samples) to ``want``, deriving limb leads where absent.

    ``missing="zero"`` fills leads that cannot be had with zeros (mask False);
    ``missing="drop"`` raises :class:`MissingLeads` instead.
    """
    plan = lead_plan(have, want, derive)
    if missing == "drop":
        absent = [w for w, p in zip(normalize_leads(want), plan) if p[0] == "missing"]
        if absent:
            raise MissingLeads(absent, normalize_leads(have))
    return apply_plan(x, plan)
