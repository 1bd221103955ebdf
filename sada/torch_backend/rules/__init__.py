"""The torch engine's skip rules, one module per rule (:mod:`sada.engine.rules.base` describes the protocol and the
registry). Importing this package registers them."""

from sada.torch_backend.rules import error_control, paper_flow, step_schedule  # noqa: F401  (registration)
from sada.torch_backend.rules.base import TorchRule
from sada.torch_backend.rules.error_control import ErrorControlRule
from sada.torch_backend.rules.paper_flow import PaperFlowRule
from sada.torch_backend.rules.step_schedule import StepScheduleRule

__all__ = ["ErrorControlRule", "PaperFlowRule", "StepScheduleRule", "TorchRule"]
