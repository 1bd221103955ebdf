"""SADAConfig validation, JSON round trip, presets; fuzzed: only clear ValueError/TypeError ever escape."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sada.config import PRESETS, ErrorControl, Numerics, SADAConfig, StepSchedule, TokenPruning, preset
from sada.trajectory import DiscreteVPSchedule, EDMSchedule, RectifiedFlowSchedule, StepGrid

VP = DiscreteVPSchedule.from_beta_schedule("scaled_linear")
VP_GRID = StepGrid.from_times(VP, VP.timesteps(50, "trailing"))
VE_GRID = StepGrid.from_edm_sigmas(EDMSchedule(), [80.0, 10.0, 1.0, 0.1, 0.0])
FLOW_GRID = StepGrid.from_times(RectifiedFlowSchedule(), RectifiedFlowSchedule().timesteps(50))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"mode": "fast"}, "mode must be one of"),
        ({"reduce": "global"}, "reduce must be one of"),
        ({"acc_range": (10, 5)}, "acc_range end must be >"),
        ({"acc_range": (10,)}, "acc_range must be a pair"),
        ({"acc_range": (-1, 40)}, r"acc_range\[0\] must be >= 0"),
        ({"max_interval": -1}, "max_interval must be >= 0"),
        ({"max_interval": 2.5}, "max_interval must be an integer"),
        ({"lagrange_step": 26}, "lagrange_step must be a multiple of lagrange_int=4"),
        ({"lagrange_int": 0}, "lagrange_int must be >= 2"),
        ({"lagrange_step": 48}, r"lagrange_step must lie in \[10, 47\)"),
        ({"acc_range": (0, 47), "lagrange_step": 8}, "lagrange_step=8 is too early"),
        ({"num_steps": 30}, "acc_range end must be <= num_steps - 2 = 28"),
        ({"abscissa": "time"}, "abscissa must be one of"),
        ({"am_noise": "zero"}, "am_noise must be one of"),
        ({"criterion": "strict"}, "criterion must be one of"),
        ({"lagrange_target": "x0/alpha"}, "lagrange_target must be one of"),
        ({"prune_blocks": (0, -1)}, r"prune_blocks\[1\] must be >= 0"),
        ({"anchor_stride": (3,)}, "anchor_stride must be a pair"),
        ({"max_fix": -1}, "max_fix must be >= 0"),
        ({"max_interval": True}, "max_interval must be an integer"),
    ],
)
def test_every_bad_field_raises_naming_the_field_and_range(changes, message):
    with pytest.raises((ValueError, TypeError), match=message):
        SADAConfig(**changes)


def test_defaults_are_resolved_in_one_place_for_a_grid_and_host():
    cfg = SADAConfig(acc_range=(10, 47))
    run = cfg.resolve(VP_GRID)
    assert (cfg.numerics.mode, cfg.reduce, cfg.schedule.acc_start, cfg.schedule.acc_end) == (
        "corrected",
        "sample",
        10,
        47,
    )
    assert (run.estimator, run.criterion, run.abscissa, run.am_noise, run.lagrange_target) == (
        "corrected",
        "paper-vp",
        "sigma",
        "extrapolate",
        "x0",
    )
    paper = SADAConfig(mode="paper", acc_range=(0, 40))
    on_vp = paper.resolve(VP_GRID, "edm")
    assert paper.schedule.acc_start == 3 and on_vp.abscissa == "index" and on_vp.am_noise == "reuse"
    assert (on_vp.estimator, on_vp.criterion, on_vp.lagrange_target) == ("paper-vp", "paper-vp", "x0_over_alpha")
    assert paper.resolve(FLOW_GRID).estimator == "paper-flow"
    assert cfg.resolve(VE_GRID).criterion == "corrected"  # the paper's criterion is undefined on a VE grid
    assert SADAConfig(criterion="corrected").resolve(VP_GRID).criterion == "corrected"
    with pytest.raises(ValueError, match="mode='paper' needs a discrete VP grid"):
        paper.resolve(VE_GRID)
    assert not SADAConfig(lagrange_term=0).schedule.uses_lagrange


def test_flat_fields_are_routed_to_their_part_and_name_the_schedule_kind():
    cfg = SADAConfig(max_fix=7, criterion="corrected", lagrange_step=20)
    assert isinstance(cfg.schedule, StepSchedule) and cfg.schedule.lagrange_step == 20
    assert cfg.pruning == TokenPruning(max_fix=7) and cfg.numerics == Numerics(criterion="corrected")
    ec = SADAConfig(tolerance=0.02)
    assert ec.schedule == ErrorControl(tolerance=0.02) and ec.replace(history=5).schedule.history == 5
    assert SADAConfig(schedule=ErrorControl(), max_interval=0).never_skips
    with pytest.raises(ValueError, match=r"\['lagrange_step'\] belong to a StepSchedule and \['tolerance'\]"):
        SADAConfig(lagrange_step=20, tolerance=0.02)
    with pytest.raises(ValueError, match="mode='paper' runs the official algorithm.*needs a StepSchedule"):
        SADAConfig(schedule=ErrorControl(), mode="paper")
    with pytest.raises(ValueError, match=r"fields \['lagrange_step'\] do not belong to this config's ErrorControl"):
        SADAConfig(schedule=ErrorControl(), lagrange_step=20)


def test_json_round_trip_is_exact():
    for cfg in list(PRESETS.values()) + [SADAConfig(schedule=StepSchedule(), abscissa="lambda", am_noise="reuse")]:
        again = SADAConfig.from_json(cfg.to_json())
        assert again == cfg and again.name == cfg.name
        assert json.loads(cfg.to_json())["schedule"]["acc_range"] == list(cfg.schedule.acc_range)
    flat = {"mode": "corrected", "acc_range": [8, 22], "lagrange_step": 12, "lagrange_term": 2, "max_fix": 3}
    assert SADAConfig.from_dict(flat) == SADAConfig(acc_range=(8, 22), lagrange_step=12, lagrange_term=2, max_fix=3)
    ec = SADAConfig(tolerance=0.03, history=5)
    assert SADAConfig.from_json(ec.to_json()) == ec


def test_unknown_keys_are_rejected():
    with pytest.raises(ValueError, match=r"unknown SADAConfig field\(s\): \['speed'\]"):
        SADAConfig.from_dict({"speed": 2})
    with pytest.raises(ValueError, match="not valid JSON"):
        SADAConfig.from_json("{mode: paper")


def test_presets_match_the_authors_settings():
    sd2 = preset("sd2")
    s = sd2.schedule
    assert (
        s.acc_range,
        s.lagrange_int,
        s.lagrange_step,
        s.lagrange_term,
        sd2.pruning.max_fix,
        s.max_interval,
        sd2.numerics.mode,
        sd2.reduce,
    ) == ((10, 47), 4, 24, 4, 5120, 4, "paper", "batch")
    assert preset("sdxl").pruning.max_fix == 10240 and preset("sdxl").pruning.max_downsample == 2
    assert (preset("flux").schedule.lagrange_step, preset("flux").schedule.lagrange_term) == (20, 3)
    s25 = preset("sd2", 25).schedule
    assert (s25.acc_range, s25.lagrange_step, s25.lagrange_term) == ((8, 22), 12, 2)
    s15 = preset("sdxl", 15).schedule
    assert (s15.acc_range, s15.lagrange_int, s15.lagrange_step) == ((7, 12), 3, 9)
    assert preset("sd2", 25, mode="corrected").numerics.mode == "corrected"
    with pytest.raises(ValueError, match="no preset for model='sd3'"):
        preset("sd3")


def test_for_steps_checks_the_range_against_the_step_count():
    assert SADAConfig(acc_range=(10, 47)).for_steps(50).schedule.num_steps == 50
    with pytest.raises(ValueError, match="num_steps - 2 = 23"):
        SADAConfig(acc_range=(10, 47)).for_steps(25)
    assert SADAConfig(tolerance=0.02).for_steps(25) == SADAConfig(tolerance=0.02)  # error control has no ranges


anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-100, 100),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.sampled_from(["paper", "corrected", "batch", "sample", "sigma", "reuse"]),
    st.tuples(st.integers(-5, 60), st.integers(-5, 60)),
    st.lists(st.integers(-5, 60), max_size=3),
)
FIELDS = [
    "mode",
    "acc_range",
    "max_interval",
    "lagrange_term",
    "lagrange_int",
    "lagrange_step",
    "abscissa",
    "am_noise",
    "criterion",
    "reduce",
    "num_steps",
    "max_fix",
    "max_downsample",
    "name",
    "lagrange_target",
    "prune_blocks",
    "anchor_stride",
    "tolerance",
    "history",
    "step_error_rms",
]


@given(st.dictionaries(st.sampled_from(FIELDS), anything, max_size=6))
def test_fuzzed_configs_either_validate_or_raise_a_clear_error(fields):
    try:
        cfg = SADAConfig(**fields)
    except (ValueError, TypeError) as exc:
        assert str(exc)
        return
    assert SADAConfig.from_json(cfg.to_json()) == cfg


@given(st.text(max_size=40))
def test_fuzzed_json_raises_only_clear_errors(text):
    try:
        SADAConfig.from_json(text)
    except (ValueError, TypeError) as exc:
        assert str(exc)


def test_error_controlled_preset_starts_the_multistep_regime_at_a_quarter_and_sets_the_tolerance():
    from sada import error_controlled_preset

    cfg = error_controlled_preset("sd2", 50)
    assert (
        cfg.numerics.mode,
        cfg.reduce,
        cfg.schedule.lagrange_step,
        cfg.schedule.lagrange_int,
        cfg.schedule.acc_range,
    ) == ("corrected", "sample", 12, 4, (10, 47))
    assert cfg.numerics.step_error_rms == pytest.approx(0.03) and cfg.pruning.max_downsample == 0
    short = error_controlled_preset("flux", 25)
    assert short.schedule.lagrange_step == 8 and short.numerics.step_error_rms == pytest.approx(0.06)
    assert error_controlled_preset("sdxl", 15).schedule.lagrange_step == 9  # 15 steps: no earlier start fits


def test_early_multistep_never_moves_the_start_later_and_validates_num_steps():
    from sada.config import early_multistep

    late = preset("sd2", 50).replace(lagrange_step=12)  # already a quarter of 50 steps
    assert early_multistep(late, 50) == late
    with pytest.raises(ValueError, match="num_steps"):
        early_multistep(preset("sd2", 50), 0)


@pytest.mark.parametrize(
    "old, new, value, where",
    [
        ("nodes", "history", 4, lambda c: c.schedule.history),
        ("lagrange_nodes", "abscissa", "lambda", lambda c: c.numerics.abscissa),
        ("error_tolerance", "step_error_rms", 0.05, lambda c: c.numerics.step_error_rms),
    ],
)
def test_renamed_fields_accept_their_old_names_for_one_release(old, new, value, where):
    from sada.errors import SADADeprecationWarning

    with pytest.warns(SADADeprecationWarning, match=f"'{old}' is renamed '{new}'"):
        flat = SADAConfig(**{old: value})
    assert where(flat) == value and flat == SADAConfig(**{new: value})
    with pytest.warns(SADADeprecationWarning):  # the same through replace and the JSON round trip
        assert where(SADAConfig(**{new: value}).replace(**{old: value})) == value
    data = json.loads(flat.to_json())
    assert new in json.dumps(data) and f'"{old}"' not in json.dumps(data)
    part = "schedule" if old == "nodes" else "numerics"
    data[part][old] = data[part].pop(new)
    with pytest.warns(SADADeprecationWarning):
        assert SADAConfig.from_dict(data) == flat
    with pytest.raises(ValueError, match=f"'{old}' is the deprecated name of '{new}'"):
        SADAConfig(**{old: value, new: value})


def test_part_constructors_accept_the_old_names_too():
    from sada.errors import SADADeprecationWarning

    with pytest.warns(SADADeprecationWarning):
        assert ErrorControl(nodes=5) == ErrorControl(history=5)
    with pytest.warns(SADADeprecationWarning):
        assert Numerics(lagrange_nodes="t").abscissa == "t"


def test_config_core_does_not_import_the_presets():
    """The config import circle (core <-> presets) is gone: core imports the fitting rule, presets import core."""
    import ast

    import sada.config.core as core

    tree = ast.parse(open(core.__file__).read())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "sada.config.presets" not in imported and "sada.config.fitting" in imported


def test_pruning_refresh_interval_defaults_to_the_skip_cap_and_can_be_set_apart():
    assert TokenPruning().refresh_interval is None
    assert SADAConfig(max_downsample=1, refresh_interval=2).pruning.refresh_interval == 2
    with pytest.raises(ValueError, match="refresh_interval must be >= 1"):
        TokenPruning(refresh_interval=0)


def test_reading_an_old_attribute_name_warns_and_returns_the_new_field():
    from sada.errors import SADADeprecationWarning

    with pytest.warns(SADADeprecationWarning, match="'nodes' is renamed 'history'"):
        assert ErrorControl(history=5).nodes == 5
    with pytest.warns(SADADeprecationWarning, match="'error_tolerance' is renamed 'step_error_rms'"):
        assert Numerics(step_error_rms=0.1).error_tolerance == 0.1
