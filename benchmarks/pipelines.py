"""The shipped digit models as ready diffusers pipelines that take a prompt: ``load_pipeline("unet")``.

The shipped networks are conditioned by a learned label table, not a text encoder. The pipelines returned here are
stock ``StableDiffusionPipeline`` / ``StableDiffusion3Pipeline`` subclasses whose only change is ``encode_prompt``:
a prompt is a digit (``"3"``, or a list of them), the negative or empty prompt is the null label, read from the
label table. So ``pipe("3", num_inference_steps=50).images[0]`` runs as it does on Stable Diffusion, and SADA's
diffusers adapter sees an ordinary pipeline. Calls default to the model's recommended guidance scale (3.0) and to
``output_type="latent"``: the models work in pixel space, so the "latents" are the images, ``[1, 16, 16]`` each in
about ``[-1, 1]`` (the pipelines' VAE is an untrained placeholder that is never used to decode).
"""

from __future__ import annotations

import inspect

import torch

__all__ = ["load_pipeline"]

_CLASSES: dict[str, type] = {}


def _labels(prompt, name: str) -> list[int]:
    prompts = [prompt] if isinstance(prompt, (str, int)) and not isinstance(prompt, bool) else prompt
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError(f"{name} must be a digit '0'..'9' or a list of them, got {prompt!r}")
    out = []
    for p in prompts:
        text = str(p).strip()
        if not (len(text) == 1 and text.isdigit()):
            raise ValueError(f"{name} must be a digit '0'..'9' (the shipped models draw digits), got {p!r}")
        out.append(int(text))
    return out


def _digit_pipeline(base: type) -> type:
    """``base`` with ``encode_prompt`` read from the label table and the model's call defaults."""
    if base.__name__ in _CLASSES:
        return _CLASSES[base.__name__]
    params = inspect.signature(base.encode_prompt)
    flow = "pooled_prompt_embeds" in params.parameters

    def encode_prompt(self, *args, **kwargs):
        bound = params.bind(self, *args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        if a["prompt"] is None:  # embeddings given: diffusers' own path
            return base.encode_prompt(self, *args, **kwargs)
        labels = torch.tensor(_labels(a["prompt"], "prompt"))
        null = self._digit_meta["null_label"]
        negative = a.get("negative_prompt")
        if negative not in (None, "") and negative != [""] * len(labels):
            raise ValueError(f"negative_prompt must be empty (the null label), got {negative!r}")
        labels = labels.repeat_interleave(int(a["num_images_per_prompt"]))
        device = a.get("device") or self._execution_device
        dtype = next(self.transformer.parameters() if flow else self.unet.parameters()).dtype
        table = {k: v.to(device=device, dtype=dtype) for k, v in self._digit_table.items()}
        nulls = torch.full_like(labels, null)
        cfg = bool(a["do_classifier_free_guidance"])
        emb, neg = table["embeddings"][labels], table["embeddings"][nulls] if cfg else None
        if not flow:
            return emb, neg
        return emb, neg, table["pooled"][labels], table["pooled"][nulls] if cfg else None

    def __call__(self, *args, **kwargs):
        kwargs.setdefault("guidance_scale", float(self._digit_meta["recommended_guidance_scale"]))
        kwargs.setdefault("output_type", "latent")
        return base.__call__(self, *args, **kwargs)

    cls = type(
        f"Digits{base.__name__}",
        (base,),
        {
            "encode_prompt": encode_prompt,
            "__call__": __call__,
            "__doc__": f"{base.__name__} for the shipped digit models: a prompt is a digit (benchmarks.pipelines).",
        },
    )
    _CLASSES[base.__name__] = cls
    return cls


def load_pipeline(name: str = "unet", sampler: str | None = None, assets: str | None = None, **config_overrides):
    """A shipped model (``unet`` or ``mmdit``) as a diffusers pipeline that takes digit prompts, loaded offline.

    ``sampler`` picks the scheduler (:data:`benchmarks.models.SCHEDULERS`: ``dpmpp_2m`` (default), ``euler``,
    ``ddim``, ``unipc``, ``heun`` for the U-Net; ``flow_euler`` for the MMDiT) with ``config_overrides`` (e.g.
    ``use_karras_sigmas=True``, ``shift=3.0``); ``assets`` as in :func:`benchmarks.models.load_model`.
    """
    from benchmarks.models import load_model

    model = load_model(name, assets)
    stock = model.pipeline(sampler, **config_overrides)
    cls = _digit_pipeline(type(stock))
    pipe = cls(**stock.components)
    pipe.set_progress_bar_config(disable=True)
    pipe._digit_table = model.table
    pipe._digit_meta = model.meta
    return pipe
