"""Hypothesis profiles: ``ci`` (derandomized, fixed example count: reproducible) and ``dev`` (more examples).

Select with ``HYPOTHESIS_PROFILE=dev``; the default is ``ci``.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", derandomize=True, max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
