"""Packaging: the light import path, the adapters mapping in a wheel and in an editable install, the CLI."""

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, cwd, env=None) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.mark.parametrize(
    "module",
    ["sada", "sada.reference", "sada.trajectory", "sada.engine.numpy_engine", "sada.engine.contract", "sada.policy"],
)
def test_core_imports_do_not_import_torch(module, tmp_path):
    loaded = _run(f"import sys, {module}; print('torch' in sys.modules, 'diffusers' in sys.modules)", tmp_path)
    assert loaded == "False False"


def test_reference_imports_nothing_from_the_upper_layers():
    for path in (ROOT / "sada" / "reference").glob("*.py"):
        text = path.read_text()
        for banned in (
            "import torch",
            "from sada.trajectory",
            "from benchmarks.lab",
            "from sada.config",
            "from sada.torch",
        ):
            assert banned not in text, f"{path.name} imports {banned!r}"


def test_editable_install_maps_the_adapters_folder_to_sada_adapters(tmp_path):
    probe = subprocess.run(
        [sys.executable, "-c", "import sada.adapters; print(sada.adapters.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        pytest.skip("sada is not installed in this environment (run `pip install -e .`)")
    location = Path(probe.stdout.strip())
    if ROOT not in location.parents:
        pytest.skip(f"sada is installed from elsewhere ({location}), not editable from this checkout")
    assert location == ROOT / "adapters" / "__init__.py"


def test_wheel_ships_adapters_as_sada_adapters_and_imports_from_it(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next((tmp_path / "dist").glob("sada_diffusion-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "sada/adapters/__init__.py" in names and "sada/reference/lagrange.py" in names
    assert not any(n.startswith("adapters/") for n in names)
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    # -S: no site processing, so an editable install's import hook (a .pth file) cannot intercept `sada`;
    # numpy/scipy still come from this environment's site-packages, placed after the wheel's target.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), sysconfig.get_paths()["purelib"]]))
    out = subprocess.run(
        [sys.executable, "-S", "-c", "import sada.adapters, sada.reference; print(sada.adapters.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    located = out.stdout.strip()
    assert Path(located) == target / "sada" / "adapters" / "__init__.py"


def test_demo_command_prints_the_savings(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.cli", "demo", "--steps", "25", "--batch", "2", "--dim", "16"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "SADA corrected:" in out and "network evaluations per sample instead of 25" in out
