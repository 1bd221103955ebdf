"""Host adapters, importable as ``sada.adapters.<host>`` (the folder is installed under ``sada``).

Each adapter knows one host (a diffusers pipeline, a k-diffusion sampler, a hand-written loop) and
only translates its step/sigma/output conventions; the math lives in ``sada.reference`` and the engines.
"""
