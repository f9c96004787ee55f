"""Simulated data sets in the published on-disk formats: DeepLense substructure (Task 1) and
3-band lens finding (Task 2), rendered in batches with caustics and validated against lenstronomy."""

from .presets import list_presets
from .stream import StreamingDataset
from .writer import simulate_lensfinding, simulate_substructure

__all__ = ["StreamingDataset", "list_presets", "simulate_lensfinding", "simulate_substructure"]
