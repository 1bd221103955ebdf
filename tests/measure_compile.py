"""Compilations and times of SADA on a compiled U-Net (the tiny SD pipeline of tests/diffusers_fixtures.py).

    .venv/bin/python -m tests.measure_compile {eager|compiled} BACKEND STEPS REDUCE BATCH {auto|off|on}

e.g. ``compiled inductor 50 sample 2 auto``. Prints the SADA summary, the row counts that entered the U-Net, the
wall time of a first (compiling) and a second pipeline call, and dynamo's counters (``unique_graphs``: the number
of graphs compiled). ``auto`` is SADA's default (lockstep when compiled), ``off`` forces per-sample decisions.
"""

import sys
import time
from collections import Counter

import torch
import torch._dynamo
from torch._dynamo.utils import counters

import sada.adapters.diffusers as sada_d
from sada import SADAConfig
from sada.config import StepSchedule
from tests import diffusers_fixtures as fx


def main(argv):
    if len(argv) != 6 or argv[0] not in ("eager", "compiled") or argv[5] not in ("auto", "off", "on"):
        raise SystemExit(__doc__)
    mode, backend, steps, reduce, batch, lock = argv[0], argv[1], int(argv[2]), argv[3], int(argv[4]), argv[5]
    torch.set_num_threads(1)
    pipe = fx.sd_pipeline()
    seen = Counter()
    # hooks on the original module run outside dynamo's frame; in eager mode SADA's hook wraps forward, so count
    # at the first convolution instead
    (pipe.unet if mode == "compiled" else pipe.unet.conv_in).register_forward_pre_hook(
        lambda m, a: seen.update([a[0].shape[0]])
    )
    if mode == "compiled":
        pipe.unet = torch.compile(pipe.unet, backend=backend)
    torch._dynamo.reset()
    counters.clear()
    pos, neg = fx.sd_embeds(batch, 0)

    def call():
        return pipe(
            prompt_embeds=pos,
            negative_prompt_embeds=neg,
            num_inference_steps=steps,
            height=16,
            width=16,
            generator=torch.Generator().manual_seed(0),
            output_type="latent",
            guidance_scale=5.0,
        ).images

    lockstep = {"auto": None, "off": False, "on": True}[lock]
    # the authors' step schedule: its per-sample decisions differ within a batch, so partial batches reach the network
    # (the schedule-free default interleaves the same steps for every sample of this pipeline: always full batches)
    config = SADAConfig(schedule=StepSchedule(), reduce=reduce)
    with torch.no_grad(), sada_d.enabled(pipe, config, lockstep=lockstep) as handle:
        t0 = time.perf_counter()
        call()
        t1 = time.perf_counter()
        summary, notes, rows = handle.summary(), handle.trace.notes, dict(seen)
        call()
        t2 = time.perf_counter()
    print(mode, backend, steps, reduce, "batch", batch, "lockstep", lock)
    print("summary:", summary, "| notes:", notes)
    print("network row counts (first call):", rows)
    print(f"first call {t1 - t0:.2f} s, second call {t2 - t1:.2f} s")
    print("dynamo stats:", dict(counters["stats"]), "frames:", dict(counters["frames"]))


if __name__ == "__main__":
    main(sys.argv[1:])
