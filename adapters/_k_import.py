"""Load ``k_diffusion.sampling`` without k-diffusion's package ``__init__``.

``pip install k-diffusion`` declares torchvision, clip, clean-fid, kornia, wandb, ... as dependencies: in an
environment with a CPU-only torch pin, pip would replace torch by a CUDA build to satisfy torchvision. The
samplers themselves (``k_diffusion/sampling.py``) need only torch, scipy, torchsde, torchdiffeq, tqdm and
``k_diffusion.utils.append_dims``; ``utils.py`` imports torchvision at its top but does not use it for
``append_dims``. :func:`load_sampling` imports the samplers from a ``pip install --no-deps k-diffusion torchsde
torchdiffeq trampoline`` install, stubbing torchvision only while ``utils.py`` is imported.
"""

from __future__ import annotations

import importlib.util
import sys
import types

__all__ = ["load_sampling"]

_TORCHVISION = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")


def load_sampling():
    """``k_diffusion.sampling`` (the sampler functions), or ``None`` when k-diffusion is not installed.

    With a complete k-diffusion install (torchvision and the rest present) this is a plain import. Otherwise the
    package ``__init__`` is bypassed: ``sys.modules["k_diffusion"]`` becomes a bare namespace for the package's
    folder, so only submodules that need no missing dependency (``sampling``, ``utils``) are importable.
    """
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None:
        return None
    try:
        import k_diffusion.sampling as sampling  # a complete install

        return sampling
    except ImportError:
        for name in [m for m in sys.modules if m == "k_diffusion" or m.startswith("k_diffusion.")]:
            del sys.modules[name]
    package = types.ModuleType("k_diffusion")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["k_diffusion"] = package
    stub = importlib.util.find_spec("torchvision") is None
    if stub:
        tv, tr, tf = (types.ModuleType(n) for n in _TORCHVISION)
        tv.transforms, tr.functional = tr, tf
        sys.modules.update(dict(zip(_TORCHVISION, (tv, tr, tf))))
    try:
        import k_diffusion.sampling as sampling
    finally:
        if stub:  # other libraries probe find_spec("torchvision"); a spec-less stub would break them
            for name in _TORCHVISION:
                sys.modules.pop(name, None)
    return sampling
