"""One registry for every model family: models are built only through `create_model`."""

from __future__ import annotations

from typing import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register_model(name: str, description: str = "") -> Callable:
    """Decorator: register a builder `fn(in_channels, num_classes, image_size, **kwargs) -> nn.Module`."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = fn
        _DESCRIPTIONS[name] = description or (fn.__doc__ or "").strip().splitlines()[0]
        return fn

    return wrap


def list_models() -> list[str]:
    return sorted(_MODELS)


def describe_models() -> dict[str, str]:
    return {name: _DESCRIPTIONS[name] for name in list_models()}


def create_model(name: str, in_channels: int, num_classes: int, *, image_size: int = 64, **kwargs) -> nn.Module:
    """Build a registered model. Every model exposes `forward_features(x)` and `head`."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    if in_channels < 1 or num_classes < 2:
        raise ValueError(f"in_channels must be >= 1 and num_classes >= 2, got {in_channels} and {num_classes}")
    return _MODELS[name](in_channels=in_channels, num_classes=num_classes, image_size=image_size, **kwargs)
