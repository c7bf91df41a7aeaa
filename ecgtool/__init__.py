"""ecgtool: a command-line toolbox for ECG foundation models.

The package is a library first; :mod:`ecgtool.cli` is a thin layer over it.
Importing :mod:`ecgtool` is cheap: torch is only imported by the model core.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
