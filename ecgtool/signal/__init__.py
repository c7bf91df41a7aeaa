"""Signal processing on numpy arrays (numpy/scipy only, no torch)."""
