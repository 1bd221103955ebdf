"""The library apart from its harness: the import rules of docs/architecture.md, checked on the source, and the wheel
(library only, small, no weights) installed alone."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# layer of each part of the library, lowest first; a module may import its own layer and the layers below it
LAYERS = {
    "sada.kernels": 0,
    "sada.reference": 1,
    "sada.errors": 1,
    "sada.validation": 1,
    "sada.trajectory": 2,
    "sada.config": 2,
    "sada.policy": 3,
    "sada.trace": 3,
    "sada.engine": 4,
    "sada.torch_backend": 5,
    "sada.session": 6,
    "sada.adapters": 7,
}
# the console entry point hands over to the harness of a checkout (inside main(), never at import)
ENTRY_POINT = "sada.cli"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "adapters":
        parts = ["sada", "adapters"] + parts[1:]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _library_files() -> list[Path]:
    return sorted(p for folder in ("sada", "adapters") for p in (ROOT / folder).rglob("*.py"))


def _imports(path: Path, module: str) -> list[tuple[str, bool]]:
    """(imported module, at module level) for every import statement of ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.append((base, id(node) in top_level))
    return found


def _layer(module: str) -> int | None:
    best = None
    for prefix, layer in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, layer)
    return None if best is None else best[1]


def test_every_library_module_has_a_layer():
    unplaced = [m for m in map(_module_name, _library_files()) if _layer(m) is None and m not in ("sada", ENTRY_POINT)]
    assert not unplaced, f"modules outside the layer table of docs/architecture.md: {unplaced}"


def test_imports_flow_one_way_and_never_reach_the_harness_or_the_tests():
    problems = []
    for path in _library_files():
        module = _module_name(path)
        own = _layer(module)
        for imported, _ in _imports(path, module):
            root = imported.split(".")[0]
            if root in ("benchmarks", "tests") and module != ENTRY_POINT:
                problems.append(f"{module} imports the harness/tests module {imported}")
            target = _layer(imported)
            if own is not None and target is not None and target > own:
                problems.append(f"{module} (layer {own}) imports {imported} (layer {target})")
    assert not problems, "\n".join(problems)


def test_the_numpy_layers_never_import_torch_or_a_host():
    for path in _library_files():
        module = _module_name(path)
        layer = _layer(module)
        if layer is None or layer > LAYERS["sada.engine"]:
            continue
        for imported, _ in _imports(path, module):
            assert imported.split(".")[0] not in ("torch", "diffusers", "k_diffusion", "scipy"), (
                f"{module} imports {imported}"
            )


def test_the_entry_point_imports_the_harness_only_when_run():
    path = ROOT / "sada" / "cli.py"
    at_import = [m for m, top in _imports(path, ENTRY_POINT) if top and m.split(".")[0] == "benchmarks"]
    assert at_import == []


def test_the_rule_catches_an_upward_import(tmp_path, monkeypatch):
    """The checker itself can fail: a kernel importing the torch engine is reported."""
    fake = ROOT / "sada" / "kernels" / "_probe_upward.py"
    fake.write_text("from sada.torch_backend.engine import SADAEngine\n")
    try:
        with pytest.raises(AssertionError, match="layer 0"):
            test_imports_flow_one_way_and_never_reach_the_harness_or_the_tests()
    finally:
        fake.unlink()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)],
        check=True,
        capture_output=True,
    )
    return next(out.glob("sada_diffusion-*.whl"))


def test_the_wheel_holds_the_library_only(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert wheel.stat().st_size <= 1_000_000, f"wheel is {wheel.stat().st_size} bytes"
    roots = {n.split("/")[0] for n in names}
    assert roots == {"sada", "sada_diffusion-0.1.0.dist-info"}, roots
    assert not [n for n in names if n.endswith((".safetensors", ".pt", ".bin", ".png", ".json"))]
    assert not [n for n in names if "/bench" in n or "/lab/" in n or "/assets/" in n]
    assert "sada/py.typed" in names


def test_the_wheel_alone_runs_the_reference_and_the_torch_engine(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    code = """
import numpy as np, torch, sys
from sada import SADAConfig
from sada.engine.numpy_engine import NumpyEngine
from sada.torch_backend.engine import SADAEngine
from sada.trajectory import RectifiedFlowSchedule, StepGrid
flow = RectifiedFlowSchedule()
grid = StepGrid.from_times(flow, flow.timesteps(20, shift=1.0))
for engine, x in ((NumpyEngine(SADAConfig(), grid, kind="flow_velocity", batch_size=2), np.ones((2, 4))),
                  (SADAEngine(SADAConfig(), grid, kind="flow_velocity"), torch.ones(2, 4, dtype=torch.float64))):
    for n in range(grid.num_steps):
        v = engine.step(n, x, lambda rows, idx: 0.5 * rows)
        x = x + (grid.sigma[n + 1] - grid.sigma[n]) * v
    print(type(engine).__name__, engine.trace.summary().split(" (")[0])
print('benchmarks' in sys.modules, any(m.startswith('benchmarks') for m in sys.modules))
"""
    # -S: no site processing, so the editable install (a .pth) and the checkout cannot leak in; numpy and torch come
    # from this environment's site-packages, after the wheel's target
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), sysconfig.get_paths()["purelib"]]))
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("NumpyEngine computed ") and lines[1].startswith("SADAEngine computed ")
    assert lines[0].split()[-1] == lines[1].split()[-1]  # the same steps computed by both engines
    assert lines[2] == "False False"


def test_every_package_folder_is_listed_for_the_wheel():
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {_module_name(p) for p in _library_files() if p.name == "__init__.py"}
    assert folders == listed
