"""Token-wise cache-assisted pruning with context: exactness against the stock diffusers blocks, token
accounting, cache memory, fallbacks, cadence."""

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers.models.attention import BasicTransformerBlock  # noqa: E402
from diffusers.models.attention_processor import AttnProcessor  # noqa: E402

from sada import SADAConfig  # noqa: E402
from sada.torch_backend.pruning import TokenPruner, anchor_mask, pool_token_map  # noqa: E402
from sada.torch_backend.pruning_blocks import block_spec  # noqa: E402
from tests.pruning_cases import CASES, IMAGE, basic_block, block_case, joint_block  # noqa: E402

CFG = SADAConfig(acc_range=(2, 40), max_interval=4, max_downsample=1, lagrange_term=0)
TOL = dict(rtol=1e-5, atol=1e-5)  # float32 rounding (on CPU the results are in fact bit-identical)


def _plan(pruner, step, unstable, computed=None):
    computed = np.ones(unstable.shape[0], bool) if computed is None else computed
    pruner.plan_step(step, computed, unstable)


def _hidden(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args, kwargs, x):
    return ((x,) + tuple(args[1:]), kwargs) if args else ((), {**kwargs, "hidden_states": x})


def _stock(block, args, kwargs):
    with torch.no_grad():
        out = block(*args, **kwargs)
    return out if isinstance(out, tuple) else (out,)


def _pruned_pair(block, args, kwargs, unstable, x_new=None, context=True):
    """Refresh at the given input, then a pruned call at ``x_new`` (default: the same input)."""
    pruner = TokenPruner(CFG, context=context)
    with torch.no_grad():
        _plan(pruner, 5, unstable)
        pruner.run_block("b", block, block.forward, args, kwargs)
        _plan(pruner, 6, unstable)
        assert list(pruner.modes) == ["prune", "prune"]
        pruner.stats = {"tokens_in": 0, "tokens_total": 0}
        a, k = (args, kwargs) if x_new is None else _with_hidden(args, kwargs, x_new)
        out = pruner.run_block("b", block, block.forward, a, k)
    return pruner, out if isinstance(out, tuple) else (out,)


def _same_map(grid, fraction=0.3, seed=1):
    one = torch.rand((1,) + grid, generator=torch.Generator().manual_seed(seed)) < fraction
    return one.expand((2,) + grid).clone()  # one token set for both rows: no padding, kept = anchors | unstable


# ---------------------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_token_unstable_equals_the_stock_block_bit_for_bit_and_refreshes_the_caches(case):
    block, args, kwargs, grid = block_case(case)
    x = _hidden(args, kwargs)
    x_new = x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    pruner, out = _pruned_pair(block, args, kwargs, torch.ones((2,) + grid, dtype=torch.bool), x_new)
    reference = _stock(block, *_with_hidden(args, kwargs, x_new))
    assert pruner.stats["tokens_in"] == pruner.stats["tokens_total"] > 0 and not pruner.fallbacks
    for got, want in zip(out, reference):
        assert (got is None and want is None) or torch.equal(got, want)
    assert torch.equal(pruner.caches["b"], reference[block_spec(block).image_output or 0])  # cache holds step 2


@pytest.mark.parametrize("case", sorted(CASES))
def test_refresh_then_prune_at_the_same_input_returns_the_stock_outputs_for_kept_and_text_tokens(case):
    block, args, kwargs, grid = block_case(case)
    reference = _stock(block, args, kwargs)
    pruner, out = _pruned_pair(block, args, kwargs, _same_map(grid))
    assert pruner.stats["tokens_in"] < 0.7 * pruner.stats["tokens_total"] and not pruner.fallbacks
    assert pruner.kv_cache_bytes() > 0
    for got, want in zip(out, reference):  # image stream (kept + cached tokens) and the text stream
        assert (got is None and want is None) or torch.testing.assert_close(got, want, **TOL) is None
    # the same call without context differs: the test can fail
    _, no_context = _pruned_pair(block, args, kwargs, _same_map(grid), context=False)
    assert max(float((a - b).abs().max()) for a, b in zip(no_context, reference) if a is not None) > 1e-3


@pytest.mark.parametrize("case", sorted(CASES))
def test_pruned_tokens_attend_to_the_cached_keys_and_values_of_stable_tokens(case):
    """Refresh at X, prune at X': kept tokens (and text) get the stock block's output at the input that is X'
    on the kept tokens and X on the stable ones; stable tokens keep the stock output at X."""
    block, args, kwargs, grid = block_case(case)
    x = _hidden(args, kwargs)
    x_new = x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    unstable = _same_map(grid)
    pruner, out = _pruned_pair(block, args, kwargs, unstable, x_new)
    kept = next(iter(pruner.anchors.values())) | unstable[0].flatten()
    assert 0 < int(kept.sum()) < kept.numel()
    mixed = torch.where(kept[None, :, None], x_new, x)
    at_mixed, at_x = _stock(block, *_with_hidden(args, kwargs, mixed)), _stock(block, args, kwargs)
    image = block_spec(block).image_output or 0
    for i, (got, want) in enumerate(zip(out, at_mixed)):
        if got is None:
            continue
        if i == image:
            want = torch.where(kept[None, :, None], want, at_x[i])
        torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("case", ["unet-basic", "sd3-joint", "flux-single", "wan"])
def test_the_cache_holds_each_tokens_latest_keys_values_and_outputs(case):
    """Refresh at X0, prune at X1 keeping A, prune at X2 keeping B: a token kept at step 1 but not at step 2
    contributes its step-1 keys/values (and output), the others their refresh ones."""
    block, args, kwargs, grid = block_case(case)
    gen = torch.Generator().manual_seed(11)
    x0 = _hidden(args, kwargs)
    x1, x2 = (x0 + 0.5 * torch.randn(x0.shape, generator=gen) for _ in range(2))
    maps = [_same_map(grid, 0.3, seed) for seed in (1, 2)]
    pruner = TokenPruner(CFG)
    with torch.no_grad():
        for step, x in ((5, x0), (6, x1), (7, x2)):
            _plan(pruner, step, maps[0] if step < 7 else maps[1])
            out = pruner.run_block("b", block, block.forward, *_with_hidden(args, kwargs, x))
    anchors = next(iter(pruner.anchors.values()))
    kept_a, kept_b = anchors | maps[0][0].flatten(), anchors | maps[1][0].flatten()
    assert (kept_a & ~kept_b).any()
    sel = lambda m: m[None, :, None]  # noqa: E731
    latest = torch.where(sel(kept_b), x2, torch.where(sel(kept_a), x1, x0))
    image = block_spec(block).image_output or 0
    want_b = _stock(block, *_with_hidden(args, kwargs, latest))[image]
    want_a = _stock(block, *_with_hidden(args, kwargs, torch.where(sel(kept_a), x1, x0)))[image]
    want_0 = _stock(block, *_with_hidden(args, kwargs, x0))[image]
    want = torch.where(sel(kept_b), want_b, torch.where(sel(kept_a), want_a, want_0))
    torch.testing.assert_close(out if isinstance(out, torch.Tensor) else out[image], want, **TOL)


@pytest.mark.parametrize("case", ["sd3-joint", "flux-double", "ltx-video"])
def test_a_row_refreshing_after_a_skip_and_a_pruned_row_share_one_call_exactly(case):
    block, args, kwargs, grid = block_case(case)
    x = _hidden(args, kwargs)
    x_new = x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    unstable = _same_map(grid)
    pruner = TokenPruner(CFG)
    with torch.no_grad():
        _plan(pruner, 5, unstable)
        pruner.run_block("b", block, block.forward, args, kwargs)
        _plan(pruner, 6, unstable, np.array([False, True]))  # sample 0 skips step 6 (its row is not run)
        _plan(pruner, 7, unstable)
        assert list(pruner.modes) == ["refresh", "prune"]
        out = pruner.run_block("b", block, block.forward, *_with_hidden(args, kwargs, x_new))
    out = out if isinstance(out, tuple) else (out,)
    kept = next(iter(pruner.anchors.values())) | unstable[0].flatten()
    fresh = _stock(block, *_with_hidden(args, kwargs, x_new))
    mixed = _stock(block, *_with_hidden(args, kwargs, torch.where(kept[None, :, None], x_new, x)))
    at_x = _stock(block, args, kwargs)
    image = block_spec(block).image_output or 0
    for i, got in enumerate(out):
        if got is None:
            continue
        torch.testing.assert_close(got[0], fresh[i][0], **TOL)  # the refreshing row: the stock block
        want = torch.where(kept[:, None], mixed[i][1], at_x[i][1]) if i == image else mixed[i][1]
        torch.testing.assert_close(got[1], want, **TOL)


# ---------------------------------------------------------------------------------------------- accounting
def _count_rows(module, seen):
    return module.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1]))


@pytest.mark.parametrize("case", ["unet-basic", "sd3-joint"])
def test_tokens_through_projections_and_mlp_match_the_map_per_sample(case):
    block, args, kwargs, _ = block_case(case)
    attn = block.attn1 if case == "unet-basic" else block.attn
    unstable = torch.zeros(2, 8, 8, dtype=torch.bool)
    unstable[0, :3] = True  # sample 0: 24 unstable tokens
    unstable[1, 7, :4] = True  # sample 1: 4 unstable tokens
    pruner = TokenPruner(CFG)
    with torch.no_grad():
        _plan(pruner, 5, unstable)
        pruner.run_block("b", block, block.forward, args, kwargs)
        _plan(pruner, 6, unstable)
        pruner.stats = {"tokens_in": 0, "tokens_total": 0}
        q, ff = [], []
        handles = [_count_rows(attn.to_q, q), _count_rows(block.ff, ff)]
        pruner.run_block("b", block, block.forward, args, kwargs)
        for h in handles:
            h.remove()
    anchors = next(iter(pruner.anchors.values())).reshape(8, 8)
    wanted = max(int((anchors | unstable[i]).sum()) for i in range(2))  # rows padded to the larger set
    assert q == [wanted] and ff == [wanted]
    assert pruner.stats["tokens_in"] == 2 * wanted and pruner.stats["tokens_total"] == 2 * 64


def test_cache_bytes_count_block_outputs_and_self_attention_keys_values():
    block, args, kwargs = joint_block(dual=True)
    pruner, _ = _pruned_pair(block, args, kwargs, _same_map(IMAGE))
    outputs = 2 * 64 * 16 * 4  # rows x tokens x width x float32
    kv = 2 * 2 * (2 * 2 * 64 * 8 * 4)  # (attn, attn2) x (K, V) x rows x heads x tokens x head_dim x float32
    assert pruner.output_cache_bytes() == outputs and pruner.kv_cache_bytes() == kv
    assert pruner.cache_bytes() == outputs + kv


# ---------------------------------------------------------------------------------------------- fallbacks
def test_a_processor_that_bypasses_sdpa_falls_back_to_whole_block_pruning_with_a_warning():
    block, args, kwargs = basic_block()
    block.attn1.set_processor(AttnProcessor())  # the pre-2.0 processor: no scaled_dot_product_attention call
    with pytest.warns(RuntimeWarning, match="runs without context"):
        pruner, out = _pruned_pair(block, args, kwargs, _same_map(IMAGE))
    assert "AttnProcessor" in pruner.fallbacks["b"] and pruner.kv_cache_bytes() == 0
    _, legacy = _pruned_pair(basic_block()[0], args, kwargs, _same_map(IMAGE), context=False)
    torch.testing.assert_close(out[0], legacy[0], **TOL)


def test_a_block_with_sequence_index_positions_is_never_pruned():
    torch.manual_seed(0)
    block = BasicTransformerBlock(16, 2, 8, positional_embeddings="sinusoidal", num_positional_embeddings=64).eval()
    x = torch.randn(2, 64, 16)
    with pytest.warns(RuntimeWarning, match="runs unpruned"):
        pruner, out = _pruned_pair(block, (x,), {}, _same_map(IMAGE), x_new=x + 1)
    assert torch.equal(out[0], _stock(block, (x + 1,), {})[0]) and pruner.stats["tokens_in"] == 0


def test_declared_output_structure_is_enforced():
    pruner = TokenPruner(CFG)
    _plan(pruner, 5, torch.ones(2, 8, 8, dtype=torch.bool))
    with pytest.raises(TypeError, match="JointTransformerBlock should return a tuple"):
        pruner.run_block(
            "j",
            "JointTransformerBlock",
            lambda hidden_states: hidden_states,
            (),
            {"hidden_states": torch.randn(2, 64, 16)},
        )


def test_a_bound_forward_given_with_the_class_name_uses_the_block_for_context():
    block, args, kwargs = basic_block()  # how a hook that holds only ``module.forward`` calls the pruner
    pruner = TokenPruner(CFG)
    with torch.no_grad():
        _plan(pruner, 5, _same_map(IMAGE))
        pruner.run_block("b", "BasicTransformerBlock", block.forward, args, kwargs)
    assert pruner.kv_cache_bytes() == 2 * (2 * 2 * 64 * 8 * 4)  # (K, V) x rows x heads x tokens x head_dim


# ---------------------------------------------------------------------------------------------- helpers
def test_anchor_grid_has_one_token_per_full_window_in_images_and_every_video_frame():
    mask = anchor_mask((7, 8), (3, 3), torch.Generator().manual_seed(0)).reshape(7, 8)
    assert int(mask.sum()) == 2 * 2
    for wy in range(2):
        for wx in range(2):
            assert int(mask[3 * wy : 3 * wy + 3, 3 * wx : 3 * wx + 3].sum()) == 1
    assert not mask[6].any() and not mask[:, 6:].any()  # incomplete border windows hold no anchors
    assert int(anchor_mask((20,), (3, 3), torch.Generator().manual_seed(0)).sum()) == 2
    video = anchor_mask((3, 6, 6), (3, 3), torch.Generator().manual_seed(0)).reshape(3, 6, 6)
    assert [int(f.sum()) for f in video] == [4, 4, 4]
    with pytest.raises(ValueError, match="stride"):
        anchor_mask((6, 6), (0, 3), torch.Generator())


def test_pooling_brings_a_latent_map_to_a_downsampled_image_or_video_block():
    unstable = torch.zeros(1, 4, 4, dtype=torch.bool)
    unstable[0, :2, :2] = True
    unstable[0, 0, 2] = True
    fraction, grid = pool_token_map(unstable, 4)
    assert grid == (2, 2)
    np.testing.assert_allclose(fraction[0].numpy(), [1.0, 0.25, 0.0, 0.0])
    with pytest.raises(ValueError, match="not a square downsampling"):
        pool_token_map(unstable, 5)
    video = torch.zeros(1, 3, 4, 4, dtype=torch.bool)
    video[0, 1, :2, :2] = True
    fraction, grid = pool_token_map(video, 12)  # Wan / CogVideoX: 2x2 spatial patches, 1 frame per token
    assert grid == (3, 2, 2) and fraction[0].tolist() == [0.0] * 4 + [1.0] + [0.0] * 7
    with pytest.raises(ValueError, match="tokens must be a positive int"):
        pool_token_map(video, 0)


def test_identity_block_prune_then_reconstruct_is_exact():
    pruner = TokenPruner(CFG)
    x = torch.randn(2, 36, 8)
    unstable = torch.rand(2, 6, 6) > 0.7
    _plan(pruner, 5, unstable)  # first in-range step: refresh (full compute, cache filled)
    assert torch.equal(pruner.run_block("b", "BasicTransformerBlock", lambda h: h * 1.0, (x,), {}), x)
    _plan(pruner, 6, unstable)
    seen = []
    out = pruner.run_block("b", "BasicTransformerBlock", lambda h: (seen.append(h.shape[1]), h * 1.0)[1], (x,), {})
    assert torch.equal(out, x) and seen[0] < 36


def test_inputs_are_validated_with_the_bad_value_named():
    with pytest.raises(TypeError, match="config must be a SADAConfig"):
        TokenPruner({"acc_range": (2, 40)})
    pruner = TokenPruner(CFG)
    with pytest.raises(ValueError, match="computed must be a 1-D boolean array"):
        pruner.plan_step(3, np.ones(2), None)
    with pytest.raises(ValueError, match="one map per sample"):
        pruner.plan_step(3, np.ones(2, bool), torch.ones(3, 4, 4, dtype=torch.bool))
    _plan(pruner, 5, torch.ones(2, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="not a prunable block"):
        pruner.run_block("x", "Conv2d", lambda h: h, (torch.randn(2, 64, 4),), {})


def test_refresh_cadence_follows_skips_and_max_interval():
    pruner = TokenPruner(CFG)
    unstable = torch.zeros(1, 4, 4, dtype=torch.bool)
    modes = []
    for step, computed in [
        (1, True),
        (2, True),
        (3, True),
        (4, True),
        (5, True),
        (6, True),
        (7, False),
        (8, True),
        (9, True),
        (10, True),
        (11, True),
        (12, True),
    ]:
        _plan(pruner, step, unstable, np.array([computed]))
        modes.append(pruner.modes[0] if computed else "skip")
    # acc_start = max(2, 3) = 3; refresh every max_interval = 4 computed steps and right after a skip
    assert modes == [
        "full",
        "full",
        "refresh",
        "prune",
        "prune",
        "prune",
        "skip",
        "refresh",
        "prune",
        "prune",
        "prune",
        "refresh",
    ]


def test_refresh_interval_is_the_skip_cap_by_default_and_its_own_field_when_set():
    from sada.config import ErrorControl, StepSchedule
    from sada.torch_backend.pruning import pruning_settings

    steps = SADAConfig(schedule=StepSchedule(max_interval=3), max_downsample=1)
    assert pruning_settings(steps).refresh_interval == 3  # the official cadence: unchanged default runs
    assert pruning_settings(steps.replace(refresh_interval=6)).refresh_interval == 6
    assert pruning_settings(steps.replace(refresh_interval=6)).acc_start == pruning_settings(steps).acc_start
    free = SADAConfig(schedule=ErrorControl(history=4), max_downsample=1)
    assert (pruning_settings(free).acc_start, pruning_settings(free).refresh_interval) == (
        4,
        2,
    )  # the second-order default cap (tolerance 0.03: two skips in a row)
