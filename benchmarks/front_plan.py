"""What the MMDiT's front (:mod:`benchmarks.front`) measures: its seeds, step counts, solvers, the dial's settings and
the groups of methods; the runner and the renderer (:mod:`benchmarks.front_render`) both read it."""

from __future__ import annotations

STEPS = 50
SEEDS = tuple(range(1000, 1016))
GROUPS = (
    "plain",
    "sada",
    "solvers",
    "sada_solvers",
    "sada_steps",
    "adaptive",
    "taylorseer",
    "first_block",
    "mag",
    "pab",
    "faster",
    "cache_dit",
    "sada_cache_dit",
)
# every count from 6 to 50 on both flow Euler and the other solvers, and the default at every even count from 8 to 60:
# both envelopes sampled as densely as each other (on the U-Net neighbouring step counts scatter by 2-5 dB)
PLAIN_STEPS = tuple(range(6, 51))
TOLERANCES = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05)
# the other solvers of the same pipeline (diffusers' multistep schedulers with flow sigmas): plain at fewer steps, and
# SADA on them at 50 steps with the dial swept
SOLVERS = {"flow_dpmpp_2m": "DPM-Solver++ 2M flow", "flow_dpmpp_3m": "DPM-Solver++ 3M flow", "flow_unipc": "UniPC flow"}
SOLVER_STEPS = PLAIN_STEPS
SOLVER_TOLERANCES = (0.002, 0.02, 0.05, 0.1)
# the default at other step counts on flow Euler and the two solvers SADA runs on (15-100 fixed before any was run;
# 8-12 added with the very-coarse-grid rule, chosen on the tuning seeds; then every even count from 8 to 60, as dense
# as the plain points), so that SADA's points span step counts as the plain solvers' do (50: the sada groups')
SADA_STEPS = tuple(sorted({15, 25, *range(8, 61, 2), 80, 100} - {STEPS}))
SADA_STEPS_SOLVERS = {
    "flow_euler": "flow Euler",
    "flow_dpmpp_2m": SOLVERS["flow_dpmpp_2m"],
    "flow_unipc": SOLVERS["flow_unipc"],
}
