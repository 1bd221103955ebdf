"""What the U-Net's front (:mod:`benchmarks.front_unet`) measures: its seeds, step counts, solvers, the dial's settings
and the groups of methods; the runner and the renderer (:mod:`benchmarks.front_unet_render`) both read it."""

from __future__ import annotations

STEPS = 50
SEEDS = tuple(range(1000, 1016))
FULL_SAMPLER = "dpmpp_2m"  # compute 1.0: the main job's U-Net cell, DPM-Solver++ 2M on 50 Karras steps
SOLVERS = {
    "euler": "Euler",
    "heun": "Heun",
    "dpmpp_2m": "DPM-Solver++ 2M",
    "dpmpp_3m": "DPM-Solver++ 3M",
    "unipc": "UniPC",
}
# every count from 10 to 50: the network is rough in its timestep input, so neighbouring counts scatter by 2-5 dB
# (plain UniPC 60.97 dB at 30 steps, 64.11 at 35); both envelopes are sampled as densely as each other
PLAIN_STEPS = tuple(range(10, 51))
HEUN_STEPS = (6, 8, 10, 13, 15, 18, 20, 25, 50)  # two evaluations per step
TOLERANCES = {  # the dial past and below each solver's default (first order 0.002, higher 0.03)
    "first": (0.001, 0.005, 0.01, 0.02),
    "higher": (0.002, 0.02, 0.05, 0.1),
}
# the default at other step counts on the second- and third-order solvers (chosen before any was run): SADA's
# points, like the plain solvers', span step counts, so its envelope is compared with theirs (Euler and Heun lie
# 20 dB below these solvers at every compute level, so they are left out). Below about 38 steps the default skips
# every other step from step 3 to the second-to-last (these solvers re-integrate, so only the last step is
# protected), so each odd count takes one skip more than the even count below it and lands on its own evaluation
# count (15 -> 9, 17 -> 10, ..., 37 -> 20); an even count shares the evaluations of the odd one above it with one step
# less (with the last two steps protected, the release before, it was the other way round: the even counts from 16
# were measured first and are kept). Every count from 15 to 37 and every even one to 60, so that SADA's points are as
# dense in compute as the plain solvers' (PLAIN_STEPS: every count); 15 and 25 are the matrix's step counts
SADA_STEPS = tuple(sorted({*range(15, 38), *range(16, 61, 2), 80, 100} - {STEPS}))  # at 50 steps: the sada group
SADA_STEPS_SOLVERS = ("dpmpp_2m", "dpmpp_3m", "unipc")
# and the dial one notch below the default (0.02: every other step at most, two in a row on a fine grid) at every
# even count from 52 to 140 steps (50 is the sada group's), so that SADA's points fill the compute between the
# default (0.40-0.56) and the full run (140 steps: about 1.0) as densely as the plain solvers' 22-50 steps do
SADA_STEPS_TOLERANCES = {n: 0.02 for n in range(52, 141, 2)}
GROUPS = ("plain", "sada", "sada_steps", "adaptive", "taylorseer", "first_block", "mag", "pab", "faster")
KARRAS = {"use_karras_sigmas": True}
# TaylorSeer's default patterns (``^blocks.*attn`` ...) match no module of a UNet2DConditionModel; this names its
# attention layers for ``cache_identifiers``
UNET_ATTENTION = r".*transformer_blocks\.\d+\.attn[12]"
