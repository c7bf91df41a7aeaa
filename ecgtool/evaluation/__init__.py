"""Evaluation rules shared by ``ecgtool probe`` and ``ecgtool finetune`` (numpy and scipy only).

* :mod:`ecgtool.evaluation.values`: one text form for a cell (fold, group,
  class name): null / NaN / blank are missing, ``9.0`` and ``9`` are the same.
* :mod:`ecgtool.evaluation.labels`: label values (1 / 0 / null = unobserved),
  class-name columns, exclusive classes, and the rule for a record_id that a
  label table lists more than once.
* :mod:`ecgtool.evaluation.splits`: fold-list splits and random group-wise
  splits (each patient in one split, split sizes balanced by rows).
* :mod:`ecgtool.evaluation.calibration`: temperature scaling for sigmoid
  (multi-label) and softmax (multi-class) logits.
"""
