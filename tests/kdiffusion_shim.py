"""Test helper: the samplers of a ``--no-deps`` k-diffusion install (see ``sada.adapters._k_import``)."""

from sada.adapters._k_import import load_sampling as load_k_sampling

__all__ = ["load_k_sampling"]
