"""Skip rules: the protocol and registry (:mod:`sada.engine.rules.base`) and the numpy engine's rules, one module per
rule (the float64 oracles of :mod:`sada.torch_backend.rules`). Importing this package registers the numpy rules."""

from sada.engine.rules.base import SkipRule, register_rule, registered_rules, rule_class
from sada.engine.rules.error_control import NumpyErrorControlRule
from sada.engine.rules.paper_flow import NumpyPaperFlowRule
from sada.engine.rules.step_schedule import NumpyStepScheduleRule

__all__ = [
    "NumpyErrorControlRule",
    "NumpyPaperFlowRule",
    "NumpyStepScheduleRule",
    "SkipRule",
    "register_rule",
    "registered_rules",
    "rule_class",
]
