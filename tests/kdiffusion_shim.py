"""Import ``k_diffusion.sampling`` without k-diffusion's heavy package ``__init__`` (test setup only).

k-diffusion is installed with ``pip install --no-deps k-diffusion torchsde torchdiffeq trampoline``
(its declared dependencies pull a CUDA torch). ``k_diffusion/__init__.py`` imports torchvision, clip,
cleanfid, ...; ``sampling.py`` itself needs only torch, scipy, torchsde, tqdm and ``utils.append_dims``,
but ``utils.py`` imports torchvision at the top, which we stub for the duration of the import.
"""
import importlib.util
import sys
import types


def load_k_sampling():
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None:
        return None
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["k_diffusion"] = pkg
    stub = importlib.util.find_spec("torchvision") is None
    names = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
    if stub:
        tv, tr, tf = (types.ModuleType(n) for n in names)
        tv.transforms, tr.functional = tr, tf
        sys.modules.update(dict(zip(names, (tv, tr, tf))))
    try:
        import k_diffusion.sampling as sampling
    finally:
        if stub:  # diffusers probes find_spec("torchvision"); a spec-less stub would break it
            for n in names:
                sys.modules.pop(n, None)
    return sampling
