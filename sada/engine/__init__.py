"""Engines: the per-step contract every host drives (plan -> run the planned rows -> complete) and its implementations.

* :mod:`sada.engine.contract` -- the :class:`~sada.engine.contract.SamplingEngine` protocol and the one shared step
  sequence (:class:`~sada.engine.contract.StepSequence`);
* :mod:`sada.engine.rules` -- the skip-rule protocol and registry (``rules.base``) and the numpy engine's rules, one
  module per rule;
* ``sada.engine.numpy_engine`` -- the float64 numpy engine (a shell around its rule), the oracle every other engine is
  tested against;
* :mod:`sada.torch_backend.engine` -- the same engine on tensors (any device and dtype).
"""

from sada.engine.contract import SamplingEngine, StepSequence

__all__ = ["SamplingEngine", "StepSequence"]
