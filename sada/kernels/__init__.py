"""The paper's formulas, each written once, for arrays of any namespace that follows the Python array API.

numpy, torch (through ``array-api-compat``), array-api-strict -- the kernels use only the standard's operations,
so the float64 reference (:mod:`sada.reference`, these kernels plus argument validation), the numpy engine and the
torch engine all compute with the same code. Kernels do not validate (the reference does, at its boundary) and
hold no state. Equation numbers are the paper's (arXiv 2507.17135).

* :mod:`sada.kernels.lagrange` -- Lagrange basis weights (eq. 16), Adams quadrature weights (Thm B.2), divided
  differences, the equal-grid extrapolation of Thm 3.1, the embedded pair, weighted sums of histories;
* :mod:`sada.kernels.estimators` -- the step estimates of Thm 3.5 (as the official code computes it, and on the
  run's noise levels), the flow-matching velocity extrapolation;
* :mod:`sada.kernels.criterion` -- Criterion 3.4 (step- and token-level) and AdaptiveDiffusion's rule.
"""

from sada.kernels.criterion import (
    adaptive_diffusion_skip,
    flow_stability_product,
    relative_rms,
    sample_means,
    second_difference,
    stability_product,
    stable_samples,
    step_transfer,
    token_instability,
    token_scores,
)
from sada.kernels.estimators import (
    corrected_step_estimate,
    flow_velocity_extrapolation,
    paper_step_estimate,
    paper_step_weights,
    paper_vp_drift,
)
from sada.kernels.lagrange import (
    adams_weights,
    combine,
    divided_difference_weights,
    embedded_pair_weights,
    equal_grid_extrapolation_weights,
    lagrange_weights,
)

__all__ = [
    "adams_weights",
    "adaptive_diffusion_skip",
    "combine",
    "corrected_step_estimate",
    "divided_difference_weights",
    "embedded_pair_weights",
    "equal_grid_extrapolation_weights",
    "flow_stability_product",
    "flow_velocity_extrapolation",
    "lagrange_weights",
    "paper_step_estimate",
    "paper_step_weights",
    "paper_vp_drift",
    "relative_rms",
    "step_transfer",
    "sample_means",
    "second_difference",
    "stability_product",
    "stable_samples",
    "token_instability",
    "token_scores",
]
