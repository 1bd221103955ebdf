"""The ``sada`` command line: bad arguments are argparse errors (exit 2, a message naming the option), never
tracebacks; every subcommand's help shows defaults, methods and the expected run time."""

import json

import pytest

from benchmarks.cli import main


def _usage_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2, argv
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, option",
    [
        (["demo", "--batch", "0"], "--batch"),  # was a ZeroDivisionError traceback
        (["demo", "--batch", "-3"], "--batch"),
        (["demo", "--dim", "0"], "--dim"),
        (["demo", "--seed", "-1"], "--seed"),
        (["demo", "--batch", "two"], "--batch"),
        (["bench", "--seeds", "0"], "--seeds"),
        (["bench", "--batch", "0"], "--batch"),
        (["bench", "--threads", "0"], "--threads"),
        (["bench", "--repeats", "-1"], "--repeats"),
        (["bench", "--reference-steps", "3"], "--reference-steps"),
        (["bench", "--seed-set", "test"], "--seed-set"),
    ],
)
def test_bad_arguments_are_usage_errors_naming_the_option(capsys, argv, option):
    err = _usage_error(capsys, argv)
    assert f"argument {option}" in err and "Traceback" not in err


def test_positive_int_errors_say_what_is_expected(capsys):
    assert "must be >= 1, got 0" in _usage_error(capsys, ["demo", "--batch", "0"])
    assert "expected an integer, got 'two'" in _usage_error(capsys, ["demo", "--batch", "two"])


def _help(capsys, argv) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv + ["--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


def test_demo_help_shows_defaults_methods_and_run_time(capsys):
    text = " ".join(_help(capsys, ["demo"]).split())
    assert "(default: 8)" in text and "(default: 64)" in text and "(default: dpmpp_2m)" in text
    assert "SADA paper" in text and "SADA corrected" in text and "error control" in text
    assert "SADA default (SADAConfig()" in text and "Expected run time: 2-5 seconds" in text


def test_bench_help_shows_defaults_methods_and_run_time(capsys):
    text = " ".join(_help(capsys, ["bench"]).split())
    for default in (
        "(default: 32)",
        "(default: 16)",
        "(default: heldout)",
        "(default: sada-bench-out)",
        "(default: ['main', 'control', 'tolerance'])",
    ):
        assert default in text, default
    for method in (
        "baseline",
        "SADA (the adapter's default configuration)",
        "SADA paper",
        "SADA step-indexed",
        "tolerance",
        "plain grids",
        "same ends",
        "karras",
    ):
        assert method in text, method
    assert (
        "Expected run time on 2 CPU cores" in text and "10.5 minutes" in text and "40 minutes for the 96 cells" in text
    )


def test_bench_report_help_shows_run_time(capsys):
    text = " ".join(_help(capsys, ["bench-report"]).split())
    assert "results.json" in text and "Expected run time" in text and "(default: False)" in text


def test_bench_lists_the_default_and_the_full_matrix(capsys):
    assert main(["bench", "--list-cells"]) == 0
    default = capsys.readouterr().out.split()
    assert default == [
        "diffusers/unet/dpmpp_2m/trailing/50",
        "diffusers/unet/dpmpp_2m/karras/50",
        "diffusers/mmdit/flow_euler/shift1/50",
        "diffusers/mmdit/flow_euler/shift1/25",
    ]
    assert main(["bench", "--full", "--list-cells"]) == 0
    full = capsys.readouterr().out.split()
    # U-Net diffusers 3 samplers x 2 spacings + Euler and Heun on Karras-linspace + UniPC and 3M on Karras, MMDiT 3 x 2
    # (flow Euler, DPM-Solver++ 2M and UniPC with flow sigmas), k-diffusion 4 x 2; 4 step counts
    assert len(full) == (6 + 2 + 2 + 6 + 8) * 4 and len(set(full)) == len(full)
    assert "diffusers/unet/heun/karras-linspace/50" in full and "diffusers/unet/unipc/karras-linspace/50" not in full
    assert main(["bench", "--cells", "k-diffusion/*/lms/*/15", "--list-cells"]) == 0
    assert capsys.readouterr().out.split() == ["k-diffusion/unet/lms/karras/15", "k-diffusion/unet/lms/exponential/15"]


def test_bench_rejects_an_unknown_cell_with_a_message():
    with pytest.raises(SystemExit) as info:
        main(["bench", "--cells", "diffusers/unet/ddim/trailing/50", "--list-cells"])
    assert "no cell matches 'diffusers/unet/ddim/trailing/50'" in str(info.value.code)


def test_bench_report_rejects_a_file_that_is_not_a_results_file(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"models": {}}))
    with pytest.raises(SystemExit) as info:
        main(["bench-report", str(path)])
    assert "cannot render" in str(info.value.code) and "settings" in str(info.value.code)


def _demo_rows(capsys, argv) -> dict[str, list[str]]:
    assert main(["demo", *argv]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| ") and "---" not in ln]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    return {c[0]: dict(zip(head, c)) for c in ([x.strip() for x in ln.strip("|").split("|")] for ln in lines[1:])}


@pytest.mark.parametrize("schedule", ["flow", "vp"])
def test_demo_scores_every_row_against_the_exact_ode_and_runs_the_library_default(capsys, schedule):
    """Issue 19: ``sada demo --schedule flow`` printed ``nan`` in every row of "RMS vs exact ODE", and the demo never
    ran ``SADAConfig()``."""
    rows = _demo_rows(capsys, ["--schedule", schedule, "--steps", "50", "--batch", "2", "--dim", "8"])
    assert "SADA default (SADAConfig())" in rows
    for name, row in rows.items():
        value = float(row["RMS vs exact ODE"])
        assert 0.0 < value < 0.5, (name, value)
    default = rows["SADA default (SADAConfig())"]
    assert float(default["NFE"]) < 50.0 and float(default["RMS vs plain sampler"]) < 0.05
