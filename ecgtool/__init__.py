"""ecgtool: a command-line toolbox for ECG foundation models.

The package is a library first; :mod:`ecgtool.cli` is a thin layer over it.
Importing :mod:`ecgtool` is cheap: torch is only imported by the model core,
when one of the model functions below is first used.

The public model API (in the spirit of timm)::

    import ecgtool
    ecgtool.list_models("ecgfm-*")                 # registered variants (from the model cards)
    m = ecgtool.create_model("ecgfm-tiny")         # an architecture, random weights
    m = ecgtool.load_model("ecgfm.safetensors")    # a checkpoint, or a released file imported on the fly
    ecgtool.model_card("ecgfm-base")               # the card: contract, licences, weights, paper numbers
"""

__version__ = "0.1.0"

__all__ = ["__version__", "list_models", "create_model", "load_model", "model_card"]


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, optionally filtered by a shell pattern (``'ecgjepa-*'``)."""
    from ecgtool.models.registry import list_models as _list

    return _list(pattern)


def create_model(name: str, **overrides):
    """A registered variant with random weights; ``overrides`` change its config."""
    from ecgtool.models.registry import create_model as _create

    return _create(name, **overrides)


def load_model(spec, *, device=None, random_weights: bool = False, **overrides):
    """A model with the ecgtool interface from ``spec``: an ecgtool ``.safetensors``, a released
    checkpoint file or folder (imported on the fly; ``overrides`` give the architecture fields it
    does not store, under the names its card uses), or a registry name (random weights only with
    ``random_weights=True``; ``'ecgtool-default'`` is the model that ships with ecgtool)."""
    from ecgtool.models.checkpoint import load_model as _load

    return _load(spec, allow_random=random_weights, device=device, **overrides)


def model_card(name: str):
    """The card of a registered variant (:class:`ecgtool.models.card.ModelCard`)."""
    from ecgtool.models.registry import model_card as _card

    return _card(name)
