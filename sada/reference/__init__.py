"""The float64 numpy reference of SADA's numerics: the kernels of :mod:`sada.kernels` plus argument validation.

One function per theorem or criterion of the paper; every function validates its arguments (NaN/Inf never enters an
estimate) and says which equation it implements. Imports no torch. The engines call the same kernels, so the
reference is the numerics themselves, not a copy of them.
"""

from sada.reference.adams import adams_bashforth_coefficients, adams_coefficients, adams_moulton_coefficients
from sada.reference.criterion import (
    REDUCTIONS,
    adaptive_diffusion_skip,
    flow_stability_product,
    is_stable,
    second_difference,
    second_divided_difference,
    stability_product,
    token_instability_map,
)
from sada.reference.estimators import (
    corrected_step_estimate,
    corrected_step_weights,
    embedded_pair_weights,
    final_sample_sensitivity,
    flow_velocity_extrapolation,
    multistep_estimate,
    paper_step_estimate,
    paper_step_weights,
    paper_vp_drift,
    skip_error,
)
from sada.reference.lagrange import (
    backward_difference,
    equal_grid_extrapolation_weights,
    extrapolation_remainder_bound,
    interpolation_error_bound,
    lagrange_basis_weights,
    lagrange_estimate,
    node_polynomial,
)

__all__ = [
    "REDUCTIONS",
    "adams_bashforth_coefficients",
    "adams_coefficients",
    "adams_moulton_coefficients",
    "adaptive_diffusion_skip",
    "backward_difference",
    "corrected_step_estimate",
    "corrected_step_weights",
    "embedded_pair_weights",
    "equal_grid_extrapolation_weights",
    "extrapolation_remainder_bound",
    "final_sample_sensitivity",
    "flow_stability_product",
    "flow_velocity_extrapolation",
    "interpolation_error_bound",
    "is_stable",
    "lagrange_basis_weights",
    "lagrange_estimate",
    "multistep_estimate",
    "node_polynomial",
    "paper_step_estimate",
    "paper_step_weights",
    "paper_vp_drift",
    "skip_error",
    "second_difference",
    "second_divided_difference",
    "stability_product",
    "token_instability_map",
]
