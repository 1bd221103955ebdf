"""The decision state machine (docs/paper-mode.md) and the AdaptiveDiffusion baseline policy."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sada.config import SADAConfig, preset
from sada.policy import AdaptiveDiffusionPolicy, Decision, SkipPolicy, simulate

ALL_UNSTABLE_COMPUTED = list(range(26)) + [29, 33, 37, 41, 45, 48, 49]
ALL_STABLE_COMPUTED = list(range(11)) + [15, 20, 25, 29, 33, 37, 41, 45, 48, 49]


def _computed(decisions, sample=0):
    return [int(i) for i in np.flatnonzero(decisions[:, sample] == Decision.COMPUTE)]


def test_all_unstable_run_computes_exactly_the_33_listed_steps():
    d = simulate(preset("sd2"), 50, np.zeros(49, bool))
    assert _computed(d) == ALL_UNSTABLE_COMPUTED and len(ALL_UNSTABLE_COMPUTED) == 33
    assert all(d[n, 0] == Decision.SKIP_LAGRANGE for n in range(26, 48) if n not in ALL_UNSTABLE_COMPUTED)


def test_all_stable_run_computes_21_steps():
    d = simulate(preset("sd2"), 50, np.ones(49, bool))
    assert _computed(d) == ALL_STABLE_COMPUTED and len(ALL_STABLE_COMPUTED) == 21
    assert [int(d[n, 0]) for n in (11, 12, 13, 14)] == [Decision.SKIP_AM] * 4


configs = st.builds(
    lambda start, span, interval, term, lag_int: SADAConfig(
        acc_range=(start, start + span),
        max_interval=interval,
        lagrange_term=term,
        lagrange_int=lag_int,
        lagrange_step=max(
            ((start + span // 2) // lag_int) * lag_int, lag_int * term, (max(start, 3) // lag_int + 1) * lag_int
        )
        if term
        else 4,
    ),
    st.integers(0, 12),
    st.integers(20, 30),
    st.integers(1, 5),
    st.sampled_from([0, 2, 3]),
    st.sampled_from([2, 3, 4]),
)


def _valid(make):
    try:
        return make()
    except ValueError:
        return None


@given(st.data(), st.integers(1, 4))
def test_properties_of_the_state_machine(data, batch):
    cfg = _valid(lambda: data.draw(configs))
    if cfg is None or cfg.schedule.acc_end > 46:
        return
    pattern = np.array(
        data.draw(st.lists(st.lists(st.booleans(), min_size=batch, max_size=batch), min_size=49, max_size=49))
    )
    d = simulate(cfg, 50, pattern)
    for b in range(batch):
        skipped = d[:, b] != Decision.COMPUTE
        run = longest = 0
        for s in skipped:
            run = run + 1 if s else 0
            longest = max(longest, run)
        assert longest <= cfg.schedule.max_interval  # never more than max_interval consecutive skips
        idx = np.flatnonzero(skipped)
        assert np.all(idx >= cfg.schedule.acc_start + 1) and np.all(
            idx <= cfg.schedule.acc_end
        )  # no skip outside the range
        am = np.flatnonzero(d[:, b] == Decision.SKIP_AM)
        assert np.all(pattern[am - 1, b])  # an AM skip needs a stable decision step


@given(st.lists(st.lists(st.booleans(), min_size=4, max_size=4), min_size=49, max_size=49), st.integers(0, 3))
def test_per_sample_decisions_do_not_depend_on_the_other_samples(pattern, i):
    pattern = np.array(pattern)
    together = simulate(preset("sd2"), 50, pattern)
    alone = simulate(preset("sd2"), 50, pattern[:, i])
    np.testing.assert_array_equal(together[:, i], alone[:, 0])


def test_node_steps_and_order_checks():
    policy = SkipPolicy(preset("sd2"), 50, 1)
    assert [k for k in range(30) if policy.is_node(k)] == [1, 5, 9, 13, 17, 21, 25, 29]
    with pytest.raises(ValueError, match="expected step 0, got 3"):
        policy.decide(3, None)
    with pytest.raises(ValueError, match=r"shape \(1,\)"):
        policy.decide(0, np.ones(2, bool))
    with pytest.raises(TypeError, match="boolean mask"):
        policy.decide(0, np.ones(1))


def test_adaptive_diffusion_policy_skips_when_latents_move_evenly_and_forces_refresh():
    policy = AdaptiveDiffusionPolicy(20, 1, threshold=0.01, max_skip_steps=2)
    out = [policy.decide(n, [1.0]) for n in range(19)]
    d = policy.decisions[:, 0]
    # warm-up: steps 0-3 compute, first skip at step 4; after 2 skips a forced refresh
    assert list(d) == [0, 0, 0, 0] + [1, 1, 0] * 5 + [1] and len(out) == 19
    uneven = AdaptiveDiffusionPolicy(20, 1)
    for n, dist in enumerate([1.0, 1.0, 1.0, 2.0, 4.0, 8.0]):
        uneven.decide(n, [dist])
    assert np.all(uneven.decisions[:7, 0] == 0)


def test_can_skip_vetoes_a_skip_and_restarts_the_counter():
    policy = SkipPolicy(preset("sd2"), 50, 2)
    for n in range(10):
        policy.decide(n, np.ones(2, bool))
    out = policy.decide(10, np.ones(2, bool), can_skip=np.array([True, False]))
    assert list(out) == [Decision.SKIP_AM, Decision.COMPUTE] and list(policy.cons_skip) == [1, 0]
    assert policy.skip_kind(23) == Decision.SKIP_AM and policy.skip_kind(24) == Decision.SKIP_LAGRANGE
