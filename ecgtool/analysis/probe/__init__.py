"""Linear probes on embeddings, with an honest report.

A probe is L2-regularised logistic regression on standardised embeddings (one
binary model per label, or one softmax model when the labels are exclusive).
All labels are fitted at once with L-BFGS: the objective is the sum of the
independent per-label objectives (each exactly scikit-learn's
``LogisticRegression(C=C)``), so one pass over the data serves every label.

Protocol (nothing is tuned on the test split):

* splits: a fold column (train = every other fold, ``val_fold`` for choices,
  ``test_fold`` for the report; PTB-XL's ``strat_fold`` 1–10 with 9/10), or
  k-fold cross-validation grouped by a column (patient): the groups of each
  fold are disjoint from the others; fold ``i`` is the test split, fold
  ``i+1`` the validation split, the rest train; test predictions of all folds
  are pooled for the report.
* on validation: the regularisation strength (per label, from a grid, by
  validation log-loss), the decision threshold (max F1 or Youden's J), and the
  temperature for calibration.
* on test: AUROC, AUPRC, F1, sensitivity, specificity with percentile
  bootstrap CIs (the same resamples for every label, so the macro average has
  a CI too), ECE / Brier / NLL before and after temperature scaling,
  subgroup tables and a data-scaling curve.

Several embeddings per record (segments) are averaged per record before
anything else, so that a record never sits in two splits.

Label values, a record_id repeated in the label table, fold values, grouped
folds and temperature scaling follow the rules of :mod:`ecgtool.evaluation`,
which ``finetune`` shares.

Heads (``--head``): ``linear`` (above); ``attention``: a learnable-query
attention pooling and a linear layer over the per-token features of
``embed --local`` (:mod:`ecgtool.analysis.attention_probe`), the frozen
mode of the ICLR-2026 benchmark; ``knn``: the vote of the k nearest training
records (:mod:`ecgtool.retrieval.knn`), smoothed to log-odds. Every head gets
the same splits, thresholds, temperature, CIs, conformal calibration and
report.

Conformal prediction (:mod:`ecgtool.analysis.conformal`) is calibrated on the
validation split at ``alpha`` and its empirical coverage reported on the test
split with a CI; the risk–coverage curve (selective prediction) and its area
are reported too.

The code: :mod:`.data` (records, embeddings, labels), :mod:`.splits`,
:mod:`.linear` (the logistic regression), :mod:`.heads` (the heads and
:class:`ProbeOptions`), :mod:`.subgroups` and :mod:`.report`
(:func:`run_probe` and the report blocks).
"""

from ecgtool.analysis.probe.data import (
    BINARY_HINT,
    STRUCTURAL,
    ProbeData,
    align_records,
    embedding_matrix,
    load_probe_data,
    subset,
    token_rows,
)
from ecgtool.analysis.probe.heads import HEADS, HeadFit, ProbeOptions, fit_head
from ecgtool.analysis.probe.linear import (
    DEFAULT_C_GRID,
    LinearModel,
    fit_logistic,
    fit_probe,
    fit_stats,
    standardise,
)
from ecgtool.analysis.probe.report import paired_difference, run_probe
from ecgtool.analysis.probe.splits import Split, fold_splits, group_cv_splits, group_folds
from ecgtool.analysis.probe.subgroups import AGE_BANDS, parse_subgroup, subgroup_values

__all__ = [
    "AGE_BANDS", "BINARY_HINT", "DEFAULT_C_GRID", "HEADS", "STRUCTURAL",
    "HeadFit", "LinearModel", "ProbeData", "ProbeOptions", "Split",
    "align_records", "embedding_matrix", "fit_head", "fit_logistic", "fit_probe", "fit_stats", "fold_splits",
    "group_cv_splits", "group_folds", "load_probe_data", "paired_difference", "parse_subgroup", "run_probe",
    "standardise", "subgroup_values", "subset", "token_rows",
]
