"""Other caches and hooks on the denoiser SADA hooks (adapters/_other_caches.py): every decision in both orders of
enabling, and disabling in either order gives the stock pipeline back."""

import warnings

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import diffusers.hooks as H  # noqa: E402
from diffusers.hooks.hooks import CacheContext, HookRegistry, ModelHook, _set_cache_context  # noqa: E402

import sada.adapters.diffusers as sada_d  # noqa: E402
from sada import SADAConfig  # noqa: E402
from sada.errors import IncompatibleHookError  # noqa: E402
from tests import diffusers_fixtures as fx  # noqa: E402

STEPS = 20


def _call(pipe, batch=2, seed=0):
    """A Flux call inside a cache context (the diffusers caches read one; FluxPipeline sets none itself)."""
    net = pipe.transformer
    HookRegistry.check_if_exists_or_initialize(net).invalidate_child_registries_cache()
    _set_cache_context(net, CacheContext("cond"))
    g = torch.Generator().manual_seed(seed)
    emb, pooled = torch.randn(batch, 6, 32, generator=g), torch.randn(batch, 32, generator=g)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*experimental.*")  # FasterCache's notice
            return pipe(
                prompt_embeds=emb,
                pooled_prompt_embeds=pooled,
                num_inference_steps=STEPS,
                height=16,
                width=16,
                generator=torch.Generator().manual_seed(seed),
                output_type="latent",
            ).images
    finally:
        _set_cache_context(net, None)


def _hook_names(module):
    return sorted(
        {
            name
            for _, sub in module.named_modules()
            for name in getattr(getattr(sub, "_diffusers_hook", None), "_hook_order", ())
        }
    )


def _pipe_and_stock():
    pipe = fx.flux_pipeline()
    return pipe, _call(pipe)


class TailRows:
    """Rows that run the last block (what FirstBlockCache skips) and rows that enter the network."""

    def __init__(self, net):
        self.tail = self.rows = 0
        self.handles = [
            net.single_transformer_blocks[-1].norm.register_forward_pre_hook(self._tail),
            net.x_embedder.register_forward_pre_hook(self._rows),
        ]

    def _tail(self, module, args):
        self.tail += args[0].shape[0]

    def _rows(self, module, args):
        self.rows += args[0].shape[0]

    def remove(self):
        for h in self.handles:
            h.remove()


# --------------------------------------------------------------------------- refused caches
def _mag(net):
    H.apply_mag_cache(net, H.MagCacheConfig(mag_ratios=H.mag_cache.FLUX_MAG_RATIOS, num_inference_steps=STEPS))


def _pab(net):
    H.apply_pyramid_attention_broadcast(
        net,
        H.PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=2, current_timestep_callback=lambda: 500),
    )


def _faster(net):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        H.apply_faster_cache(
            net,
            H.FasterCacheConfig(
                current_timestep_callback=lambda: 500, attention_weight_callback=lambda _: 0.3, tensor_format="BCHW"
            ),
        )


def _taylor(net):
    H.apply_taylorseer_cache(
        net, H.TaylorSeerCacheConfig(cache_interval=3, disable_cache_before_step=2, taylor_factors_dtype=torch.float32)
    )


REFUSED = {
    "MagCache": (_mag, "mag_cache"),
    "PyramidAttentionBroadcast": (_pab, "pyramid_attention_broadcast"),
    "FasterCache": (_faster, "faster_cache"),
    "TaylorSeer": (_taylor, "taylorseer_cache"),
}


def _remove_all(net):
    registry = HookRegistry.check_if_exists_or_initialize(net)
    for name in [n for n in _hook_names(net) if n != "sada"]:
        registry.remove_hook(name, recurse=True)


@pytest.mark.parametrize("label", sorted(REFUSED))
def test_a_cache_that_counts_calls_is_refused_at_enable_and_sada_is_undone(label):
    apply, prefix = REFUSED[label]
    pipe = fx.flux_pipeline()
    apply(pipe.transformer)
    before = _hook_names(pipe.transformer)
    with pytest.raises(IncompatibleHookError, match=label) as info:
        sada_d.enable(pipe)
    assert "disable SADA" in str(info.value) and "remove" in str(info.value)
    assert getattr(pipe, "_sada_handle", None) is None and "step" not in pipe.scheduler.__dict__
    assert _hook_names(pipe.transformer) == before and all(n != "sada" for n in before)
    assert any(n.startswith(prefix) for n in before)


@pytest.mark.parametrize("label", sorted(REFUSED))
def test_a_cache_enabled_after_sada_is_refused_at_the_first_call(label):
    apply, _ = REFUSED[label]
    pipe = fx.flux_pipeline()
    handle = sada_d.enable(pipe)
    apply(pipe.transformer)
    with pytest.raises(IncompatibleHookError, match=label):
        _call(pipe)
    # the way out the message gives: remove the cache, and SADA runs
    _remove_all(pipe.transformer)
    _call(pipe)
    assert handle.summary().startswith("computed ")
    sada_d.disable(pipe)
    assert _hook_names(pipe.transformer) == []


def test_an_unknown_hook_is_refused_in_both_orders_and_group_offloading_is_not():
    class Counter(ModelHook):
        def pre_forward(self, module, *args, **kwargs):
            return args, kwargs

    pipe = fx.flux_pipeline()
    net = pipe.transformer
    net.enable_group_offload(torch.device("cpu"), offload_type="block_level", num_blocks_per_group=1)
    HookRegistry.check_if_exists_or_initialize(net).register_hook(Counter(), "my_counter")
    with pytest.raises(IncompatibleHookError, match="'my_counter'.*does not know") as info:
        sada_d.enable(pipe)
    assert "group offloading" in str(info.value)  # the message lists what composes
    net._diffusers_hook.remove_hook("my_counter", recurse=False)
    handle = sada_d.enable(pipe)  # group offloading alone composes
    HookRegistry.check_if_exists_or_initialize(net.transformer_blocks[0]).register_hook(Counter(), "my_counter")
    with pytest.raises(IncompatibleHookError, match="'my_counter' \\(at transformer_blocks.0\\)"):
        _call(pipe)
    net.transformer_blocks[0]._diffusers_hook.remove_hook("my_counter", recurse=False)
    _call(pipe)
    assert handle.summary().startswith("computed ")
    sada_d.disable(pipe)


# --------------------------------------------------------------------------- FirstBlockCache: lockstep only
def _fbc_on(pipe):
    H.apply_first_block_cache(pipe.transformer, H.FirstBlockCacheConfig(threshold=0.3))


def _fbc_off(pipe):
    registry = HookRegistry.check_if_exists_or_initialize(pipe.transformer)
    registry.remove_hook("fbc_leader_block_hook", recurse=True)
    registry.remove_hook("fbc_block_hook", recurse=True)


def test_first_block_cache_without_lockstep_is_refused_in_both_orders():
    pipe = fx.flux_pipeline()
    _fbc_on(pipe)
    with pytest.raises(IncompatibleHookError, match="FirstBlockCache.*lockstep=True"):
        sada_d.enable(pipe)
    _fbc_off(pipe)
    sada_d.enable(pipe)
    _fbc_on(pipe)
    with pytest.raises(IncompatibleHookError, match="FirstBlockCache.*partial batches"):
        _call(pipe)
    _fbc_off(pipe)
    sada_d.disable(pipe)


# random weights are rough in the timestep: the default dial skips little at 20 steps; a looser one shows the composition
LOOSER = SADAConfig(tolerance=0.05)


@pytest.mark.parametrize("sada_first", [True, False])
@pytest.mark.parametrize("sada_off_first", [True, False])
def test_first_block_cache_with_lockstep_compounds_in_every_order(sada_first, sada_off_first):
    pipe, stock = _pipe_and_stock()
    net = pipe.transformer
    counts = {}
    for label in ("sada", "fbc", "both"):
        counter = TailRows(net)
        if label != "fbc":
            sada_d.enable(pipe, LOOSER, lockstep=True)
        if label != "sada":
            _fbc_on(pipe)
        out = _call(pipe)
        counts[label] = (counter.rows, counter.tail)
        counter.remove()
        if label == "both":
            break
        if label != "fbc":
            sada_d.disable(pipe)
        else:
            _fbc_off(pipe)
    assert not torch.equal(out, stock)
    full = 2 * STEPS
    assert counts["sada"][0] < full and counts["fbc"][1] < full  # each saves on its own
    # the savings compound: SADA's evaluations, and fewer tail-block rows than either alone
    assert counts["both"][0] == counts["sada"][0]
    assert counts["both"][1] < min(counts["sada"][1], counts["fbc"][1])
    if sada_off_first:
        sada_d.disable(pipe)
        _fbc_off(pipe)
    else:
        _fbc_off(pipe)
        sada_d.disable(pipe)
    assert _hook_names(net) == [] and "forward" not in net.__dict__
    assert torch.equal(_call(pipe), stock)


# --------------------------------------------------------------------------- group offloading: always composes
@pytest.mark.parametrize("sada_first", [True, False])
def test_group_offloading_composes_bit_identically_in_both_orders(sada_first):
    pipe, stock = _pipe_and_stock()
    with sada_d.enabled(pipe):
        sada_alone = _call(pipe)
    net = pipe.transformer

    def offload():
        net.enable_group_offload(torch.device("cpu"), offload_type="block_level", num_blocks_per_group=1)

    if sada_first:
        handle = sada_d.enable(pipe)
        offload()
    else:
        offload()
        handle = sada_d.enable(pipe)
    assert torch.equal(_call(pipe), sada_alone)
    assert handle.summary().startswith("computed ")
    sada_d.disable(pipe)
    assert torch.equal(_call(pipe), stock)  # offloading alone: the stock numbers
    assert "sada" not in _hook_names(net)


# --------------------------------------------------------------------------- cache-dit
def _cache_dit_on(pipe):
    cache_dit = pytest.importorskip("cache_dit")
    cache_dit.enable_cache(
        pipe,
        cache_config=cache_dit.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=2.0),
    )


def test_cache_dit_without_lockstep_is_refused_in_both_orders():
    cache_dit = pytest.importorskip("cache_dit")
    pipe = fx.flux_pipeline()
    _cache_dit_on(pipe)
    with pytest.raises(IncompatibleHookError, match="cache-dit.*lockstep=True"):
        sada_d.enable(pipe)
    cache_dit.disable_cache(pipe)
    sada_d.enable(pipe)
    _cache_dit_on(pipe)
    with pytest.raises(IncompatibleHookError, match="cache-dit.*disable_cache"):
        _call(pipe)
    cache_dit.disable_cache(pipe)
    sada_d.disable(pipe)


def test_cache_dit_enabled_after_sada_is_refused_and_both_can_be_disabled():
    cache_dit = pytest.importorskip("cache_dit")
    pipe, stock = _pipe_and_stock()
    net = pipe.transformer
    sada_d.enable(pipe, LOOSER, lockstep=True)
    _cache_dit_on(pipe)
    with pytest.raises(IncompatibleHookError, match="cache-dit was enabled .* after SADA.*enable cache-dit first"):
        _call(pipe)
    # the way out the message gives; cache_dit.disable_cache used to raise AttributeError here
    # ('functools.partial' object has no attribute '__get__') and leave _original_forward on the transformer
    cache_dit.disable_cache(pipe)
    sada_d.disable(pipe)
    assert not hasattr(net, "_original_forward") and _hook_names(net) == []
    assert torch.equal(_call(pipe), stock)


@pytest.mark.parametrize("sada_off_first", [True, False])
def test_cache_dit_first_then_sada_with_lockstep_compounds(sada_off_first):
    cache_dit = pytest.importorskip("cache_dit")
    pipe, stock = _pipe_and_stock()
    net = pipe.transformer
    with sada_d.enabled(pipe, LOOSER, lockstep=True):
        counter = TailRows(net)
        _call(pipe)
        counter.remove()
    sada_rows = (counter.rows, counter.tail)
    _cache_dit_on(pipe)
    handle = sada_d.enable(pipe, LOOSER, lockstep=True)
    counter = TailRows(net)
    out = _call(pipe)
    counter.remove()
    assert handle.summary().startswith("computed ") and not torch.equal(out, stock)
    # the savings compound (the dial decides on the outputs, which the cache changes: the counts may differ)
    assert counter.rows < 2 * STEPS and counter.tail <= sada_rows[1]
    if sada_off_first:
        sada_d.disable(pipe)
        cache_dit.disable_cache(pipe)
    else:
        cache_dit.disable_cache(pipe)
        sada_d.disable(pipe)
    assert not hasattr(net, "_original_forward") and "sada" not in _hook_names(net)
    assert torch.equal(_call(pipe), stock)
