"""Probability-space members of the cross-entropy family (filled in by the family's kernels)."""
__all__ = []
