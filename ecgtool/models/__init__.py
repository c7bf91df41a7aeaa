"""The model core: registry, ECG-FM transformer, Net1D, checkpoints.

Importing this package is light; torch is imported by the family modules.
"""

from ecgtool.models.contract import InputContract  # noqa: F401
from ecgtool.models.registry import create_model, list_models, model_info, register_model  # noqa: F401
