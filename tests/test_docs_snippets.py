"""Every ```python block of README.md and docs/*.md runs as written (issue 19: "every snippet runs, in a test").

A page's blocks run in order in one namespace, as a reader would type them. A name a block uses but the page never
defines is the reader's own object (``pipe``, ``model``, ``sigmas``, ...); it is supplied by the *documented setup*
(docs/models.md, "Names the snippets assume"): the shipped models, loaded with one call. A block that is not meant to
run says so in its first line, visibly in the page: ``# not run: <why>``; the test counts them and fails when a page
has more than :data:`MAX_NOT_RUN`.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import io
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
NOT_RUN = "# not run:"
MAX_NOT_RUN = 2
K_DIFFUSION_STEPS = 50  # the setup's k-diffusion sigmas (a grid where the default skips two in a row)
# pages whose snippets fail for a reason outside the snippet (an API still in flux): page -> reason
EXPECTED_FAILURES: dict[str, str] = {}


def blocks(page: Path) -> list[str]:
    return BLOCK.findall(page.read_text())


def free_names(code: str, known) -> set[str]:
    """Names ``code`` reads before binding them, in the order it runs (``x = f(x)`` reads ``x``), or reads inside a
    function it never binds; neither builtins nor in ``known``."""
    free: set[str] = set()
    bound: set[str] = set(known) | set(dir(builtins))
    deferred: set[str] = set()

    def names(node, ctx):
        return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ctx)}

    def local(node):  # lambda and comprehension variables
        comprehensions = [c.target for c in ast.walk(node) if isinstance(c, ast.comprehension)]
        return {a.arg for a in ast.walk(node) if isinstance(a, ast.arg)} | {
            n for t in comprehensions for n in names(t, ast.Store)
        }

    def reads(node):
        free.update(names(node, ast.Load) - bound - local(node))

    def scan(statements):
        for stmt in statements:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                deferred.update(names(stmt, ast.Load) - local(stmt) - names(stmt, ast.Store))
                bound.add(stmt.name)
            elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
                bound.update((a.asname or a.name).split(".")[0] for a in stmt.names)
            elif isinstance(stmt, (ast.For, ast.AsyncFor)):
                reads(stmt.iter)
                bound.update(names(stmt.target, ast.Store))
                scan(stmt.body + stmt.orelse)
            elif isinstance(stmt, (ast.With, ast.AsyncWith)):
                for item in stmt.items:
                    reads(item.context_expr)
                    if item.optional_vars is not None:
                        bound.update(names(item.optional_vars, ast.Store))
                scan(stmt.body)
            elif isinstance(stmt, (ast.If, ast.While)):
                reads(stmt.test)
                scan(stmt.body + stmt.orelse)
            elif isinstance(stmt, ast.Try):
                scan(stmt.body + [s for h in stmt.handlers for s in h.body] + stmt.orelse + stmt.finalbody)
            else:
                reads(stmt)
                bound.update(names(stmt, ast.Store))

    scan(ast.parse(code).body)
    return free | (deferred - bound)


# ---------------------------------------------------------------------------------------------- the documented setup
_CACHE: dict = {}


def _pipe():
    from benchmarks.pipelines import load_pipeline

    if "pipe" not in _CACHE:
        _CACHE["pipe"] = load_pipeline("unet")  # the shipped U-Net, DPM-Solver++ 2M, digit prompts
    return _CACHE["pipe"]


def _k_diffusion() -> dict:
    """``model(x, sigma, **extra) -> denoised``: the shipped U-Net drawing the digit 3; Karras ``sigmas`` (with the
    final 0), the unit-variance ``noise`` and the start ``x = noise * sigmas[0]``."""
    import torch

    from benchmarks.kdiff import DigitsEpsDenoiser, kdiffusion_sigmas
    from benchmarks.models import load_model

    digits = DigitsEpsDenoiser(load_model("unet"))

    def model(x, sigma, **extra):
        return digits(x, sigma, labels=torch.full((x.shape[0],), 3))

    sigmas = kdiffusion_sigmas(digits, "karras", K_DIFFUSION_STEPS)
    noise = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    return {"model": model, "sigmas": sigmas, "noise": noise, "x": noise * sigmas[0]}


def _loop(ns: dict) -> dict:
    """A hand-written loop's objects: a 50-step VP ``grid`` and its times ``t``, an epsilon ``model(x, t)`` (the exact
    denoiser of a Gaussian mixture), a DDIM ``solver_step(x, eps, n)``, the start ``x``; the README's
    ``my_model(x_rows, n)`` / ``my_solver_step(x, eps, n)`` on the page's own ``grid``."""
    import torch

    from benchmarks.lab.distributions import random_mixture
    from benchmarks.lab.ode import ExactModel
    from sada.trajectory import DiscreteVPSchedule, StepGrid

    schedule = DiscreteVPSchedule.from_beta_schedule("scaled_linear")
    exact = ExactModel(random_mixture(64, 6, seed=1), kind="epsilon")
    own = StepGrid.from_times(schedule, schedule.timesteps(50, "trailing"))

    def grid_of():
        return ns.get("grid", own)

    def model(x_rows, t):
        alpha, sigma = (float(v) for v in schedule.alpha_sigma(float(t)))
        return torch.from_numpy(exact(np.asarray(x_rows), alpha, sigma))

    def ddim(x, eps, n):
        g = grid_of()
        x0 = (x - g.sigma[n] * eps) / g.alpha[n]
        return g.alpha[n + 1] * x0 + g.sigma[n + 1] * eps

    def my_model(x_rows, n):
        return exact(x_rows, grid_of().alpha[n], grid_of().sigma[n])

    x = torch.randn(4, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * own.sigma[0]
    return {
        "grid": own,
        "t": own.times,
        "model": model,
        "solver_step": ddim,
        "x": x,
        "my_model": my_model,
        "my_solver_step": ddim,
    }


def setup_for(code: str, ns: dict) -> dict:
    """The documented objects for the names ``code`` uses but its page never defined."""
    from sada import SADAConfig

    missing = free_names(code, ns)
    k_diffusion = "sada_k" in code or "k_diffusion" in code
    provided = {}
    if missing & {"pipe", "prompt"}:
        provided.update(pipe=_pipe(), prompt="3")
    if "config" in missing:
        provided["config"] = SADAConfig()
    if missing & {"model", "sigmas", "noise", "x", "grid", "t", "solver_step", "my_model", "my_solver_step"}:
        provided.update({k: v for k, v in (_k_diffusion() if k_diffusion else _loop(ns)).items() if k in missing})
    return provided


# ---------------------------------------------------------------------------------------------- the tests
@pytest.fixture(autouse=True)
def one_torch_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_page_with_code_is_collected():
    with_code = {p.name for p in PAGES if blocks(p)}
    assert {
        "README.md",
        "quickstart.md",
        "howto-loop.md",
        "howto-diffusers.md",
        "howto-k-diffusion.md",
        "models.md",
    } <= with_code


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p)], ids=lambda p: str(p.relative_to(ROOT)))
def test_snippets_run_as_written(page, capsys):
    name = str(page.relative_to(ROOT))
    if name in EXPECTED_FAILURES:
        pytest.xfail(EXPECTED_FAILURES[name])
    ns: dict = {"__name__": "__docs__"}
    skipped = []
    for i, code in enumerate(blocks(page)):
        if code.lstrip().startswith(NOT_RUN):
            skipped.append(code.lstrip().splitlines()[0])
            continue
        ns.update(setup_for(code, ns))
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                exec(compile(code, f"{name}[python block {i + 1}]", "exec"), ns)
        except Exception as exc:
            raise AssertionError(
                f"{name}, python block {i + 1} fails as written: {type(exc).__name__}: {exc}\n{code}"
            ) from exc
    assert len(skipped) <= MAX_NOT_RUN, f"{name} has {len(skipped)} blocks marked '{NOT_RUN}': {skipped}"
    capsys.readouterr()


def test_a_snippet_that_cannot_run_fails_the_test():
    """The runner is not vacuous: an undefined name or a failing call is reported with the page and block."""
    with pytest.raises(NameError):
        exec(compile("k_diffusion.sampling.sample_euler", "x", "exec"), {**setup_for("k_diffusion", {})})
    assert free_names("import numpy as np\nx = np.zeros(3)\nprint(y, x)", {}) == {"y"}
    assert free_names("x = f(x)\ndef g():\n    return h + x", {"f"}) == {"x", "h"}
