"""Token-wise cache-assisted pruning: exactness, bit-identity at full maps, token accounting, padding."""
import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers.models.attention import BasicTransformerBlock  # noqa: E402

from sada import SADAConfig  # noqa: E402
from sada.torch_backend.pruning import TokenPruner, anchor_mask, pool_token_map  # noqa: E402

CFG = SADAConfig(acc_range=(2, 40), max_interval=4, max_downsample=1, lagrange_term=0)


def _plan(pruner, step, unstable, computed=None):
    computed = np.ones(unstable.shape[0], bool) if computed is None else computed
    pruner.plan_step(step, computed, unstable)


def test_anchor_grid_has_one_token_per_full_window():
    mask = anchor_mask((7, 8), (3, 3), torch.Generator().manual_seed(0)).reshape(7, 8)
    assert int(mask.sum()) == 2 * 2
    for wy in range(2):
        for wx in range(2):
            assert int(mask[3 * wy: 3 * wy + 3, 3 * wx: 3 * wx + 3].sum()) == 1
    assert not mask[6].any() and not mask[:, 6:].any()  # incomplete border windows hold no anchors
    assert int(anchor_mask((20,), (3, 3), torch.Generator().manual_seed(0)).sum()) == 2


def test_pooling_brings_a_latent_map_to_a_downsampled_block():
    unstable = torch.zeros(1, 4, 4, dtype=torch.bool)
    unstable[0, :2, :2] = True
    unstable[0, 0, 2] = True
    fraction, grid = pool_token_map(unstable, 4)
    assert grid == (2, 2)
    np.testing.assert_allclose(fraction[0].numpy(), [1.0, 0.25, 0.0, 0.0])
    with pytest.raises(ValueError, match="not a square downsampling"):
        pool_token_map(unstable, 5)


def test_identity_block_prune_then_reconstruct_is_exact():
    pruner = TokenPruner(CFG)
    x = torch.randn(2, 36, 8)
    unstable = torch.rand(2, 6, 6) > 0.7
    _plan(pruner, 5, unstable)  # first in-range step: refresh (full compute, cache filled)
    assert list(pruner.modes) == ["refresh", "refresh"]
    assert torch.equal(pruner.run_block("b", "BasicTransformerBlock", lambda h: h * 1.0, (x,), {}), x)
    _plan(pruner, 6, unstable)
    assert list(pruner.modes) == ["prune", "prune"]
    seen = []
    out = pruner.run_block("b", "BasicTransformerBlock", lambda h: (seen.append(h.shape[1]), h * 1.0)[1], (x,), {})
    assert torch.equal(out, x) and seen[0] < 36


def _block():
    torch.manual_seed(0)
    return BasicTransformerBlock(dim=16, num_attention_heads=2, attention_head_dim=8, cross_attention_dim=12).eval()


def test_real_block_with_every_token_unstable_equals_the_unpruned_block_bit_for_bit():
    block = _block()
    pruner = TokenPruner(CFG)
    x, ctx = torch.randn(2, 64, 16), torch.randn(2, 5, 12)
    with torch.no_grad():
        reference = block(x, encoder_hidden_states=ctx)
        _plan(pruner, 5, torch.ones(2, 8, 8, dtype=torch.bool))
        pruner.run_block("b", "BasicTransformerBlock", block, (x,), {"encoder_hidden_states": ctx})
        _plan(pruner, 6, torch.ones(2, 8, 8, dtype=torch.bool))
        assert list(pruner.modes) == ["prune", "prune"]
        out = pruner.run_block("b", "BasicTransformerBlock", block, (x,), {"encoder_hidden_states": ctx})
    assert torch.equal(out, reference)


def test_fraction_of_tokens_through_the_block_matches_the_map_and_sets_are_per_sample():
    block = _block()
    pruner = TokenPruner(CFG)
    x, ctx = torch.randn(2, 81, 16), torch.randn(2, 5, 12)
    unstable = torch.zeros(2, 9, 9, dtype=torch.bool)
    unstable[0, :3] = True  # sample 0: 27 unstable tokens
    unstable[1, 8, :4] = True  # sample 1: 4 unstable tokens
    with torch.no_grad():
        _plan(pruner, 5, unstable)
        pruner.run_block("b", "BasicTransformerBlock", block, (x,), {"encoder_hidden_states": ctx})
        _plan(pruner, 6, unstable)
        pruner.stats = {"tokens_in": 0, "tokens_total": 0}
        seen = []
        out = pruner.run_block("b", "BasicTransformerBlock",
                               lambda h, **kw: (seen.append(h.shape), block(h, **kw))[1], (x,),
                               {"encoder_hidden_states": ctx})
    anchors = next(iter(pruner.anchors.values())).reshape(9, 9)
    wanted = [int((anchors | unstable[i]).sum()) for i in range(2)]
    assert seen[0] == (2, max(wanted), 16)  # dense: both rows padded to the larger set
    assert pruner.stats["tokens_in"] == 2 * max(wanted) and pruner.stats["tokens_total"] == 2 * 81
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert pruner.cache_bytes() == 2 * 81 * 16 * 4


def test_refresh_cadence_follows_skips_and_max_interval():
    pruner = TokenPruner(CFG)
    unstable = torch.zeros(1, 4, 4, dtype=torch.bool)
    modes = []
    for step, computed in [(1, True), (2, True), (3, True), (4, True), (5, True), (6, True), (7, False), (8, True),
                           (9, True), (10, True), (11, True), (12, True)]:
        _plan(pruner, step, unstable, np.array([computed]))
        modes.append(pruner.modes[0] if computed else "skip")
    # acc_start = max(2, 3) = 3; refresh every max_interval = 4 computed steps and right after a skip
    assert modes == ["full", "full", "refresh", "prune", "prune", "prune", "skip", "refresh", "prune", "prune",
                     "prune", "refresh"]
