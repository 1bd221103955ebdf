"""Float64 numpy reference of SADA's numerics: one function per theorem or criterion of the paper.

Imports no torch. The torch backend takes its scalar coefficients from here and is tested against it.
"""
from sada.reference.adams import (
    ADAMS_MOULTON_TABLE,
    adams_bashforth_coefficients,
    adams_coefficients,
    adams_moulton_coefficients,
)
from sada.reference.criterion import (
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
    flow_velocity_extrapolation,
    multistep_estimate,
    paper_step_estimate,
    paper_step_weights,
    paper_vp_drift,
)
from sada.reference.lagrange import (
    backward_difference,
    equal_grid_extrapolation_weights,
    extrapolation_remainder_bound,
    interpolation_error_bound,
    lagrange_basis_polynomials,
    lagrange_basis_weights,
    lagrange_estimate,
    node_polynomial,
)

__all__ = [
    "ADAMS_MOULTON_TABLE", "adams_bashforth_coefficients", "adams_coefficients", "adams_moulton_coefficients",
    "adaptive_diffusion_skip", "backward_difference", "corrected_step_estimate", "corrected_step_weights", "embedded_pair_weights",
    "equal_grid_extrapolation_weights", "extrapolation_remainder_bound", "flow_stability_product",
    "flow_velocity_extrapolation", "interpolation_error_bound", "is_stable", "lagrange_basis_polynomials",
    "lagrange_basis_weights", "lagrange_estimate", "multistep_estimate", "node_polynomial",
    "paper_step_estimate", "paper_step_weights", "paper_vp_drift", "second_difference",
    "second_divided_difference", "stability_product", "token_instability_map",
]
