"""Model families. Importing this package registers every family with the registry."""

from . import equivariant, report_cnn, resnet, resnet_pool  # noqa: F401  (importing registers the models)
from ._registry import create_model, describe_models, list_models, register_model

__all__ = ["create_model", "describe_models", "list_models", "register_model"]
