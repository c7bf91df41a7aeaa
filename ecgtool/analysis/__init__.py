"""Evaluation of embeddings and models: metrics with confidence intervals,
calibration, linear probes, figures (numpy/scipy/scikit-learn; no torch)."""
