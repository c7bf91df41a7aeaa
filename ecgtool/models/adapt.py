"""The one path from a table's signals to a model's input leads (inference and training alike; numpy only).

Leads are selected by name and, where a model lead is absent, derived from I
and II only while the samples are still in physical units (a raw table, or a
preprocessed one without normalisation): III = II - I, aVR = -(I + II)/2, ...
hold for millivolts, not for z-scored leads. A table that is already
normalised and lacks a lead the model needs gets that lead zero-filled, with a
warning, never derived. Raw tables go through the model's preprocess preset,
which derives before it normalises.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from ecgtool.errors import InputError, UsageError
from ecgtool.io import schema as S
from ecgtool.models.contract import InputContract

log = logging.getLogger("ecgtool")


class LeadMap:
    """Builds the model's leads (in its order) from a table's leads.

    ``absent``: model leads that are zero-filled; ``derived``: model leads
    computed from I and II (only when ``physical``).
    """

    def __init__(self, have: Sequence[str], contract: InputContract, physical: bool, source: str = "input"):
        from ecgtool.signal.derive import lead_plan
        from ecgtool.signal.leads import normalize_leads

        self.have = tuple(normalize_leads(have))
        self.want = tuple(normalize_leads(contract.leads))
        self.identity = self.have == self.want
        self.plan = lead_plan(self.have, self.want, derive=physical)
        self.absent = [w for w, p in zip(self.want, self.plan) if p[0] == "missing"]
        self.derived = [w for w, p in zip(self.want, self.plan) if p[0] in ("derive", "negate")]
        if len(self.absent) == len(self.want):
            raise InputError(f"{source}: none of the model's leads ({', '.join(self.want)}) is in the table "
                             f"({', '.join(self.have)})",
                             "rename the table's leads with 'ecgtool preprocess --rename OLD=NEW'")
        self.physical = physical
        self.not_derived = [] if physical else [w for w in self.absent if w in ("III", "aVR", "aVL", "aVF")
                                                 and "I" in self.have and "II" in self.have]

    def messages(self) -> list[str]:
        out = []
        if self.derived:
            out.append(f"leads {','.join(self.derived)} are derived from I and II")
        if self.not_derived:
            out.append(f"leads {','.join(self.not_derived)} are zero-filled, not derived from I and II, because the "
                       "table is already normalised (derive them from mV: preprocess the raw records with the "
                       "model's preset)")
        rest = [w for w in self.absent if w not in self.not_derived]
        if rest:
            out.append(f"leads {','.join(rest)} are absent and zero-filled (as random lead masking trains for); "
                       "predictions may be less reliable")
        return out

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(..., table leads, T) -> (..., model leads, T)."""
        if self.identity:
            return x
        from ecgtool.signal.derive import apply_plan

        out, _mask = apply_plan(x, self.plan)
        return out.astype(np.float32, copy=False)


def check_preprocessed(pre: S.Preprocessing, contract: InputContract, source: str = "input") -> None:
    """Refuse a table preprocessed for another model (normalisation differs), saying which preset to use."""
    if pre.normalisation != contract.normalisation:
        raise UsageError(
            f"{source}: the table was preprocessed for another model: normalisation {pre.normalisation} "
            f"(the model wants {contract.normalisation})",
            f"preprocess the raw records with --preset {contract.preset} (or pass the records table itself and "
            "let the model apply its preset)" if contract.preset else "preprocess the raw records to the model's contract")


def lead_map_for(meta: S.TableMeta | None, leads: Sequence[str], contract: InputContract,
                 source: str = "input") -> LeadMap:
    """The lead map for a table with ``leads`` and metadata ``meta`` (preprocessed or not)."""
    pre = meta.preprocessing if meta is not None else None
    if pre is not None:
        check_preprocessed(pre, contract, source)
    return LeadMap(leads, contract, physical=pre is None or pre.physical_units, source=source)
