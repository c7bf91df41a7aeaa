"""``preprocess``: record tables in, model-ready fixed-shape tables out.

The pipeline, in order (each step a no-op when not asked for or when a record
already satisfies it):

1. **leads**: pick, reorder and derive leads (III, aVR, aVL, aVF from I and II);
   leads that cannot be had are zero-filled with ``lead_mask`` False, or the
   record is dropped (``missing="drop"``).
2. **quality flags** on the signal in mV: ``q_nan``, ``q_flat_leads``,
   ``q_clipping``, ``q_amplitude`` (see :mod:`ecgtool.signal.quality`);
   optionally drop flagged records.
3. **NaN policy**: ``zero`` (NaN -> 0 after flagging) or ``drop`` the record.
   A record whose samples are all NaN is an error either way.
4. **resample** to ``fs`` (``linear`` as ECG-FM, or ``poly`` = resample_poly).
5. **filters** at the output rate: band-pass, notch, baseline removal
   (median or high-pass), all zero-phase.
6. **normalise** over the whole record (``norm_scope="record"``), then
7. **length**: crop/pad to ``length`` seconds, or non-overlapping
   ``segment``-second windows (remainder dropped, ``segment`` index added),
8. or normalise each output row (``norm_scope="output"``).

Every output row shares fs, lead order and length, so the signal column is
fixed-shape. Columns the pipeline does not own pass through (repeated for
every segment of a record). Rows of a batch that share rate, length and lead
layout are processed as one (N, L, T) stack.

The settings live in :mod:`ecgtool.preprocess.config` (:class:`PreprocessConfig`,
:func:`make_config`, presets and policy constants), the pipeline in
:mod:`ecgtool.preprocess.pipeline` (:class:`Preprocessor`,
:func:`preprocess_batches`, :func:`preprocess_table`); both are re-exported here.
"""

from ecgtool.preprocess.config import (
    BASELINES,
    FILTER_SETS,
    MISSING,
    NAN_POLICIES,
    NORM_SCOPES,
    PRECISIONS,
    SHORT_POLICIES,
    PreprocessConfig,
    make_config,
    presets,
    rename_map,
    round_precision,
)
from ecgtool.preprocess.pipeline import (
    OWNED,
    QUALITY_COLUMNS,
    Preprocessor,
    preprocess_batches,
    preprocess_table,
)

__all__ = [
    "BASELINES",
    "FILTER_SETS",
    "MISSING",
    "NAN_POLICIES",
    "NORM_SCOPES",
    "OWNED",
    "PRECISIONS",
    "QUALITY_COLUMNS",
    "SHORT_POLICIES",
    "PreprocessConfig",
    "Preprocessor",
    "make_config",
    "preprocess_batches",
    "preprocess_table",
    "presets",
    "rename_map",
    "round_precision",
]
