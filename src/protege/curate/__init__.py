"""Curation of generated data: near-duplicate and exact-duplicate filters (no torch import)."""
