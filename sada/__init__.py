"""sada: Stability-guided Adaptive Diffusion Acceleration (ICML 2025) as a solver-hook library.

``import sada`` is light: numpy only (no torch, no scipy). Backends and host adapters live in
``sada.torch_backend`` and ``sada.adapters.<host>``; typed exceptions and warnings in :mod:`sada.errors`.
"""

from sada.config import PRESETS, SADAConfig, error_controlled_preset, preset
from sada.policy import Decision, SkipPolicy
from sada.trace import Trace

__version__ = "0.1.0"

__all__ = [
    "Decision",
    "PRESETS",
    "SADAConfig",
    "SkipPolicy",
    "Trace",
    "error_controlled_preset",
    "preset",
    "__version__",
]
