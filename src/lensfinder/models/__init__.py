"""Model families. Importing this package registers every family with the registry."""

from . import report_cnn  # noqa: F401  (registers report-cnn3, report-cnn4)
from ._registry import create_model, describe_models, list_models, register_model

__all__ = ["create_model", "describe_models", "list_models", "register_model"]
