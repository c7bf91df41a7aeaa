"""One text form for the cells that name a fold, a group or a class.

Folds and groups come from columns whose type depends on how a table was
made: PTB-XL's ``strat_fold`` is an integer in one table, a float (``9.0``)
after a join with nulls, text from a CSV, and the command line gives text.
:func:`value_text` maps all of them onto one string so that ``9``, ``9.0``,
``"9"`` and ``"9.0"`` are the same value, and every form of null is ``None``.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable

import numpy as np

# Text that stands for a missing value (compared stripped and lower-cased): the nulls that CSV
# readers write back as text.
MISSING_TEXT = frozenset({"", "nan", "na", "n/a", "null", "none"})

_DECIMAL = re.compile(r"^[+-]?(\d+\.\d*|\.\d+)$")


def is_missing(v: Any) -> bool:
    """True for None, a float NaN, and blank / ``nan`` / ``na`` / ``n/a`` / ``null`` / ``none`` text."""
    if v is None:
        return True
    if isinstance(v, (float, np.floating)):
        return math.isnan(float(v))
    if isinstance(v, (str, np.str_)):
        return v.strip().lower() in MISSING_TEXT
    return False


def value_text(v: Any) -> str | None:
    """The cell as text, ``None`` when missing; whole-number floats (and ``"9.0"``) become integers' text.

    ``9``, ``9.0``, ``np.int64(9)``, ``"9"`` and ``" 9.0 "`` all give ``"9"``; ``9.5`` and ``"9.50"`` give
    ``"9.5"``. Text that is not a decimal number is kept as it is (stripped), so ``"09"`` stays ``"09"``.
    """
    if is_missing(v):
        return None
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return _float_text(float(v))
    s = str(v).strip()
    if _DECIMAL.match(s):
        return _float_text(float(s))
    return s


def _float_text(f: float) -> str:
    if math.isinf(f):
        return str(f)
    return str(int(f)) if f.is_integer() else repr(f)


def value_texts(values: Iterable[Any]) -> np.ndarray:
    """:func:`value_text` of each value, as an object array (``None`` where missing)."""
    return np.array([value_text(v) for v in values], dtype=object)
