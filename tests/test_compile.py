"""SADA with a ``torch.compile``d denoiser: lockstep decisions, bounded compilations, no graph break in the compiled
region (tiny random-weight SD pipeline, batch 2 with classifier-free guidance = 4 rows, 20 steps, CPU)."""

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import sada.adapters.diffusers as sada_d  # noqa: E402
import sada.adapters.k_diffusion as sada_k  # noqa: E402
from sada import SADAConfig  # noqa: E402
from sada.config import ErrorControl, StepSchedule  # noqa: E402
from sada.torch_backend.compiled import LOCKSTEP_NOTE, is_compiled, resolve_lockstep  # noqa: E402
from tests import diffusers_fixtures as fx  # noqa: E402

try:
    import torch._dynamo  # noqa: F401
    from torch._dynamo.utils import counters

    HAS_COMPILE = hasattr(torch, "compile")
except Exception:  # pragma: no cover - builds without dynamo
    HAS_COMPILE = False
needs_compile = pytest.mark.skipif(
    not HAS_COMPILE, reason="torch.compile (dynamo) is not available in this torch build"
)

STEPS, BATCH = 20, 2
OUTPUT_TOLERANCE = 1e-4  # max |compiled - eager| on latents of scale ~1 (inductor fuses and reorders float32 ops)


def _call(pipe, steps=STEPS, batch=BATCH):
    pos, neg = fx.sd_embeds(batch, 0)
    return pipe(
        prompt_embeds=pos,
        negative_prompt_embeds=neg,
        num_inference_steps=steps,
        height=16,
        width=16,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
        guidance_scale=5.0,
    ).images


def _rows_seen(pipe, compiled: bool):
    """Row counts entering the network: on a module to be compiled, a hook on the module itself (dynamo runs the
    inner module's hooks outside its frame); eager, on its first convolution (SADA's hook wraps ``forward``)."""
    seen = []
    target = pipe.unet if compiled else pipe.unet.conv_in
    handle = target.register_forward_pre_hook(lambda m, a: seen.append(int(a[0].shape[0])))
    return seen, handle


def _run(
    compiled: bool,
    backend: str = "inductor",
    reduce: str = "sample",
    lockstep=None,
    steps=STEPS,
    batch=BATCH,
    schedule=None,
):
    pipe = fx.sd_pipeline()
    seen, hook = _rows_seen(pipe, compiled)
    if compiled:
        pipe.unet = torch.compile(pipe.unet, backend=backend)
    torch._dynamo.reset()
    counters.clear()
    with (
        torch.no_grad(),
        sada_d.enabled(pipe, SADAConfig(schedule=schedule, reduce=reduce), lockstep=lockstep) as handle,
    ):
        out = _call(pipe, steps, batch)
    hook.remove()
    graphs = int(counters["stats"]["unique_graphs"])
    return out, handle.trace, seen, graphs


@needs_compile
def test_compiled_unet_runs_lockstep_matches_eager_batch_decisions_and_compiles_once():
    dial = ErrorControl(tolerance=0.02)  # set: every other step at most, whatever the grid-dependent default allows
    eager, eager_trace, eager_rows, _ = _run(False, reduce="batch", schedule=dial)
    out, trace, rows, graphs = _run(True, backend="inductor", schedule=dial)
    assert (0, LOCKSTEP_NOTE) in trace.notes
    np.testing.assert_array_equal(trace.decisions, eager_trace.decisions)  # same decisions as eager reduce="batch"
    computed = trace.network_evaluations() // BATCH
    assert 10 <= computed < STEPS  # SADA skipped steps
    assert rows == [2 * BATCH] * computed  # full batch only, and only on computed steps
    assert eager_rows == rows
    assert graphs == 1  # one compilation for the whole run
    assert float((out - eager).abs().max()) <= OUTPUT_TOLERANCE


@needs_compile
def test_forced_per_sample_decisions_feed_partial_batches_and_recompile():
    """``lockstep=False`` keeps per-sample decisions on a compiled network: partial batches (here 12 of 16 rows at
    two steps) fail the guards and compile a second graph; outputs still equal the eager per-sample run."""
    # the authors' step schedule: its per-sample decisions differ within this batch (the default's interleaving does not)
    eager, eager_trace, eager_rows, _ = _run(False, batch=8, steps=50, schedule=StepSchedule())
    out, trace, rows, graphs = _run(
        True, backend="aot_eager", lockstep=False, batch=8, steps=50, schedule=StepSchedule()
    )
    np.testing.assert_array_equal(trace.decisions, eager_trace.decisions)
    assert rows == eager_rows and len(set(rows)) >= 2  # partial batches reached the compiled network
    assert graphs >= 2
    assert not any(note == LOCKSTEP_NOTE for _, note in trace.notes)
    assert float((out - eager).abs().max()) <= OUTPUT_TOLERANCE


@needs_compile
def test_skip_hook_stays_outside_the_compiled_region_without_graph_breaks():
    pipe = fx.sd_pipeline()
    pipe.unet = torch.compile(pipe.unet, backend="aot_eager")
    with sada_d.enabled(pipe):
        assert "forward" in pipe.unet.__dict__  # the hook replaced the OptimizedModule's own forward ...
        assert "forward" not in pipe.unet._orig_mod.__dict__  # ... never the forward dynamo traces
        assert pipe.unet._diffusers_hook.get_hook("sada").params[:2] == ("sample", "timestep")  # the inner module's
        pos, _ = fx.sd_embeds(4, 0)
        torch._dynamo.reset()
        explained = torch._dynamo.explain(pipe.unet._orig_mod)(
            torch.randn(4, 4, 16, 16), torch.tensor(500.0), encoder_hidden_states=pos
        )
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    assert not hasattr(pipe.unet, "_diffusers_hook") and "forward" not in vars(pipe.unet._orig_mod)  # cleaned up


@needs_compile
def test_compiled_detection_and_lockstep_resolution():
    net = torch.nn.Linear(2, 2)
    assert not is_compiled(net) and not is_compiled(None) and not is_compiled(lambda x: x)
    assert is_compiled(torch.compile(net, backend="eager"))
    assert is_compiled(torch.compile(lambda x: x + 1, backend="eager"))
    inplace = torch.nn.Linear(2, 2)
    inplace.compile(backend="eager")
    assert is_compiled(inplace)

    class KWrapper:  # k-diffusion's CompVisDenoiser keeps the network as ``inner_model``
        inner_model = torch.compile(net, backend="eager")

    assert is_compiled(KWrapper())
    assert resolve_lockstep(None, KWrapper()) is True and resolve_lockstep(False, KWrapper()) is False
    with pytest.raises(TypeError, match="'yes'"):
        resolve_lockstep("yes", net)
    with pytest.raises(TypeError, match="'yes'"):
        sada_d.enable(fx.sd_pipeline(), lockstep="yes")
    pipe = fx.sd_pipeline()
    pipe.unet = torch.compile(pipe.unet, backend="eager")
    with pytest.raises(ValueError, match="token pruning"):
        sada_d.enable(pipe, SADAConfig(max_fix=64, max_downsample=1))


@needs_compile
def test_k_diffusion_wrapper_goes_lockstep_for_a_compiled_model():
    sigmas = torch.tensor(np.geomspace(10.0, 0.05, 25).tolist() + [0.0])
    rng = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 8, generator=rng)  # one clean sample for every row: the model accepts any row subset

    def model(x, sigma):
        return x / (1 + sigma[:, None] ** 2) + (sigma[:, None] ** 2 / (1 + sigma[:, None] ** 2)) * x0

    def euler(denoiser, x):
        for i in range(len(sigmas) - 1):
            s = sigmas[i].expand(x.shape[0])
            d = (x - denoiser(x, s)) / sigmas[i]
            x = x + d * (sigmas[i + 1] - sigmas[i])
        return x

    noise = torch.randn(3, 8, generator=rng) * sigmas[0]
    eager = sada_k.wrap(model, sigmas, sampler="sample_euler", lockstep=True)
    compiled = sada_k.wrap(torch.compile(model, backend="eager"), sigmas, sampler="sample_euler")
    forced = sada_k.wrap(torch.compile(model, backend="eager"), sigmas, sampler="sample_euler", lockstep=False)
    x_eager, x_compiled = euler(eager, noise.clone()), euler(compiled, noise.clone())
    euler(forced, noise.clone())
    assert compiled.engine.lockstep and not forced.engine.lockstep and eager.engine.lockstep
    assert (0, LOCKSTEP_NOTE) in compiled.trace.notes and (0, LOCKSTEP_NOTE) not in eager.trace.notes
    np.testing.assert_array_equal(compiled.trace.decisions, eager.trace.decisions)
    assert (compiled.trace.decisions == compiled.trace.decisions[:, :1]).all()  # every sample decides alike
    assert compiled.trace.network_evaluations() < 3 * 25
    torch.testing.assert_close(x_compiled, x_eager, rtol=0, atol=1e-5)
