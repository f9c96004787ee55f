"""lensfinder: deep learning for strong gravitational lensing images.

The Python API (each function is what the matching ``lensfinder`` command calls):

    import lensfinder
    model = lensfinder.load_model("shipped", task="lensfinding")   # a torch.nn.Module
    table = lensfinder.predict(model, images)                      # (N, 3, 64, 64) g, r, i in nanomaggies

`simulate`, `train`, `evaluate`, `predict`, `load_model`, `list_presets`, `list_models`, `shipped_models`;
`InputError` is the one error a user's mistake raises. Torch is imported only when a function needs it.
"""

from __future__ import annotations

import sys
import types
from importlib.metadata import PackageNotFoundError, version as _version

# `simulate`, `train` and `evaluate` name both an API function and a stage's subpackage. Importing a subpackage
# (lensfinder.evaluate.predict, ...) binds its module to the package attribute, which would hide the function;
# so each stage's module, once imported, is made callable as the function of its name. `lensfinder.evaluate(...)`
# and `import lensfinder.evaluate.predict` then both keep working, in any order.
_STAGES = ("simulate", "train", "evaluate")


class _CallableStage(types.ModuleType):
    """A stage's subpackage that, called, runs the API function of the same name (`lensfinder.api`)."""

    def __call__(self, *args, **kwargs):
        from . import api

        return getattr(api, self.__name__.rpartition(".")[2])(*args, **kwargs)


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value) -> None:
        if name in _STAGES and isinstance(value, types.ModuleType) and type(value) is types.ModuleType:
            value.__class__ = _CallableStage
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

from .api import evaluate, list_models, list_presets, load_model, predict, shipped_models, simulate, train  # noqa: E402
from .validation import InputError  # noqa: E402

for _stage in _STAGES:  # a stage imported before the functions were bound (none normally) keeps its module
    if f"{__name__}.{_stage}" in sys.modules:
        setattr(sys.modules[__name__], _stage, sys.modules[f"{__name__}.{_stage}"])

try:
    __version__ = _version("lensfinder")  # one version, pyproject.toml's
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["InputError", "__version__", "evaluate", "list_models", "list_presets", "load_model", "predict",
           "shipped_models", "simulate", "train"]
