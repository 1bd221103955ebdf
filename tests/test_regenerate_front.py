"""The one command that regenerates the front: which processes it starts, in which order, and its input checks."""

import sys
from pathlib import Path

import pytest

from benchmarks.regenerate_front import commands, main, unet_commands


def test_every_run_gets_its_own_process_and_render_reads_every_result():
    todo = commands(Path("out"), "docs/results/front.md")
    runs, render = todo[:-1], todo[-1]
    assert [cmd[:4] for cmd in runs] == [[sys.executable, "-m", "benchmarks.front", "run"]] * 5
    assert [
        (cmd[cmd.index("--shift") + 1], cmd[cmd.index("--groups") + 1] if "--groups" in cmd else None) for cmd in runs
    ] == [
        ("1", None),
        ("1", "cache_dit"),
        ("1", "sada_cache_dit"),
        ("3", None),
        ("3", "cache_dit"),
    ]
    outputs = [cmd[cmd.index("--out") + 1] for cmd in runs]
    assert len(set(outputs)) == 5
    assert render[3] == "render"
    assert render[4:9] == outputs
    assert render[-2:] == ["--update", "docs/results/front.md"]


def test_one_shift_without_update_renders_to_stdout():
    todo = commands(Path("o"), None, (3.0,))
    assert len(todo) == 3
    assert "--update" not in todo[-1]
    assert todo[-1][4:] == [str(Path("o") / "shift3.json"), str(Path("o") / "shift3-cache-dit.json")]


def test_unknown_shift_is_named_in_the_error():
    with pytest.raises(ValueError, match="2.5"):
        commands(Path("o"), None, (2.5,))
    with pytest.raises(ValueError, match="at least one"):
        commands(Path("o"), None, ())


def test_dry_run_prints_the_commands_and_starts_nothing(capsys, tmp_path):
    assert main(["--out", str(tmp_path / "f"), "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 8 and lines[5].split()[3] == "render" and lines[-1].split()[3] == "render"
    assert lines[-2].split()[2] == "benchmarks.front_unet"
    assert not (tmp_path / "f").exists()
    assert main(["--out", str(tmp_path / "f"), "--models", "mmdit", "--dry-run"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 6


def test_the_unet_front_is_one_run_and_a_render_beside_the_mmdit_page():
    run, render = unet_commands(Path("o"), "docs/results/front.md")
    assert run[2:4] == ["benchmarks.front_unet", "run"] and run[-1] == str(Path("o") / "unet-karras.json")
    assert render[3:5] == ["render", str(Path("o") / "unet-karras.json")]
    assert render[-2:] == ["--update", str(Path("docs/results/front-unet.md"))]
    assert "--update" not in unet_commands(Path("o"), None)[1]
