"""The U-Net front's page and plot (:mod:`benchmarks.front_unet` runs it): every point sorted by compute, and each SADA
point against the best plain point and the best peer at no more compute."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.front_unet_plan import (
    FULL_SAMPLER,
    SADA_STEPS,
    SADA_STEPS_SOLVERS,
    SADA_STEPS_TOLERANCES,
    SOLVERS,
    STEPS,
)

PLOT_NAME = "front-unet-karras.png"
LABELLED_STEPS = ("15", "16", "20", "26", "32", "40", "56", "100")  # the default's step counts named on the plot
LABELLED_TOLERANCE_STEPS = ("64", "100", "120", "140")  # and those of one notch below it
SADA_GROUPS = ("sada", "sada_steps")  # the dial at 50 steps; the default at other step counts
COMMAND = (
    "python -m benchmarks.front_unet run --out docs/results/front-data/unet-karras.json && "
    "python -m benchmarks.front_unet render docs/results/front-data/unet-karras.json --update docs/results/front-unet.md"
)


def load(paths) -> dict:
    """The methods of every result file, later files overriding earlier ones."""
    methods: dict = {}
    for path in paths:
        methods.update(json.loads(Path(path).read_text())["methods"])
    return methods


def best_at_most(methods: dict, compute: float, groups) -> tuple[str, dict] | None:
    """The point of ``groups`` with the highest PSNR against the ODE solution at no more than ``compute`` (1e-9
    slack; a peer that changed nothing is left out), ``None`` if there is none."""
    fits = [
        (name, m)
        for name, m in methods.items()
        if "error" not in m
        and not m.get("identical_to_full")  # a cache that hooked nothing is the plain run, not a peer point
        and m["group"] in groups
        and m["compute"] <= compute + 1e-9
    ]
    return max(fits, key=lambda kv: kv[1]["psnr_ode"], default=None)


def solver_points(methods: dict, sampler: str) -> dict:
    """The SADA and plain points of one solver (the cache peers run on the full run's solver only)."""
    if sampler not in SOLVERS:
        raise ValueError(f"sampler must be one of {sorted(SOLVERS)}, got {sampler!r}")
    return {
        name: m
        for name, m in methods.items()
        if m.get("sampler") == sampler and m.get("group") in (*SADA_GROUPS, "plain")
    }


def trend_summary(methods: dict, sampler: str, span: float = 1.25) -> str:
    """One line: every SADA point on ``sampler`` against that solver's plain trend at its evaluation count (the
    least-squares line in log evaluations over the plain grids within a factor ``span``,
    :func:`benchmarks.plain_curve.trend_at`) -- the comparison that does not follow either side's luckiest grids."""
    from benchmarks.plain_curve import trend_at

    points = solver_points(methods, sampler)
    plain = sorted((m["evaluations"], m["psnr_ode"]) for m in points.values() if m["group"] == "plain")
    if len(plain) < 3:
        raise ValueError(f"the trend of {sampler!r} needs at least 3 plain points, got {len(plain)}")
    low, high = plain[0][0] * span, plain[-1][0] / span  # where the window holds plain grids on both sides
    gaps, scatters = [], []
    for m in points.values():
        if m["group"] in SADA_GROUPS and low <= m["evaluations"] <= high:
            value, scatter, _ = trend_at([e for e, _ in plain], [p for _, p in plain], m["evaluations"], span)
            gaps.append(m["psnr_ode"] - value)
            scatters.append(scatter)
    if not gaps:
        return f"No SADA point on {SOLVERS[sampler]} between {low:g} and {high:g} evaluations."
    above = sum(g > 0 for g in gaps)
    return (
        f"Every SADA point on {SOLVERS[sampler]} from {low:g} to {high:g} evaluations against the plain solver's trend "
        f"at its evaluation count (a least-squares line in log evaluations over the plain grids within a factor "
        f"{span:g}): {len(gaps)} points, mean {sum(gaps) / len(gaps):+.2f} dB, {above} above it, "
        f"{min(gaps):+.2f} to {max(gaps):+.2f}; the plain grids' RMS scatter about their trend "
        f"{min(scatters):.2f}-{max(scatters):.2f} dB."
    )


PEER_GROUPS = ("adaptive", "taylorseer", "first_block", "mag", "pab", "faster")


def comparison_rows(
    methods: dict, sada_groups=SADA_GROUPS, plain_groups=("plain",), peer_groups=PEER_GROUPS
) -> list[str]:
    """One row per SADA point: it, the best plain point of any solver and the best other peer at no more compute."""
    rows = [
        "| SADA point | compute | PSNR vs ODE | best plain solver at <= compute | its PSNR | SADA - plain (dB) "
        "| best other peer at <= compute | its PSNR |",
        "|---|---|---|---|---|---|---|---|",
    ]
    sada = sorted(
        ((n, m) for n, m in methods.items() if m.get("group") in sada_groups and "error" not in m),
        key=lambda kv: -kv[1]["compute"],
    )
    for name, m in sada:
        plain = best_at_most(methods, m["compute"], plain_groups)
        peer = best_at_most(methods, m["compute"], peer_groups)
        plain_cells = (
            f"{plain[0]} | {plain[1]['psnr_ode']:.2f} | {m['psnr_ode'] - plain[1]['psnr_ode']:+.2f}"
            if plain
            else "-- | -- | --"
        )
        peer_cells = f"{peer[0]} | {peer[1]['psnr_ode']:.2f}" if peer else "none | --"
        rows.append(f"| {name} | {m['compute']:.3f} | {m['psnr_ode']:.2f} | {plain_cells} | {peer_cells} |")
    return rows


def envelope_rows(
    methods: dict, sada_groups=SADA_GROUPS, rival_groups=("plain",), rival="best plain solver"
) -> list[str]:
    """The two envelopes as step functions: at each compute level of the front (every point's compute at which both
    sides have a point) the best SADA point and the best ``rival_groups`` point at no more than that compute, and
    their difference (a level between two SADA points meets SADA's cheaper one); a row only where either best point
    changes, then one line counting the levels where SADA is ahead."""
    rows = [
        f"| compute | best SADA point at <= compute | its PSNR | {rival} at <= compute | its PSNR | SADA - it (dB) |",
        "|---|---|---|---|---|---|",
    ]
    levels = sorted(
        {
            round(m["compute"], 6)
            for m in methods.values()
            if "error" not in m and m.get("group") in (*sada_groups, *rival_groups)
        }
    )
    previous, gaps = None, []
    for level in levels:
        sada, other = best_at_most(methods, level, sada_groups), best_at_most(methods, level, rival_groups)
        if sada is None or other is None:
            continue
        gap = sada[1]["psnr_ode"] - other[1]["psnr_ode"]
        gaps.append((level, gap))
        if (sada[0], other[0]) == previous:
            continue
        previous = (sada[0], other[0])
        rows.append(
            f"| {level:.3f} | {sada[0]} | {sada[1]['psnr_ode']:.2f} | {other[0]} | {other[1]['psnr_ode']:.2f} "
            f"| {gap:+.2f} |"
        )
    if gaps:
        behind = [f"{level:.3f} ({gap:+.2f})" for level, gap in gaps if gap <= 0]
        rows += [
            "",
            f"SADA ahead at {len(gaps) - len(behind)} of {len(gaps)} compute levels from {gaps[0][0]:.3f} up"
            + (f"; not at {', '.join(behind)}." if behind else "."),
        ]
    return rows


def plot_envelopes(ax, methods: dict, envelopes) -> None:
    """Draw each ``(groups, label)`` envelope -- the best point of ``groups`` at no more than each of their computes --
    as a step line: the first solid, the others dotted."""
    for index, (groups, label) in enumerate(envelopes):
        levels = sorted({m["compute"] for m in methods.values() if "error" not in m and m.get("group") in groups})
        best = [(level, best_at_most(methods, level, groups)) for level in levels]
        points = [(level, b[1]["psnr_ode"]) for level, b in best if b is not None]
        ax.step(
            [p[0] for p in points],
            [p[1] for p in points],
            "k-" if index == 0 else "k:",
            where="post",
            label=label + (" (best point at no more compute)" if index == 0 else ""),
            linewidth=1.2,
            alpha=0.7,
        )


def render(paths, image_dir: Path | None = None) -> str:
    methods = load(paths)
    lines = [
        "# The fidelity-versus-compute front on the shipped U-Net",
        "",
        f"Generated by `{COMMAND}` ([Benchmarks](../benchmarks.md#the-front-on-the-u-net)). Karras sigmas; "
        f"SADA at {STEPS} steps on each solver with its dial swept, its default at {SADA_STEPS[0]}-{SADA_STEPS[-1]} "
        f"steps (every count to {max(n for n in SADA_STEPS if n < 38 and n % 2)}, every even count to "
        f"{max(n for n in SADA_STEPS if n <= 60)}) and one notch below it (tolerance 0.02) "
        f"at every even count from {min(SADA_STEPS_TOLERANCES)} to {max(SADA_STEPS_TOLERANCES)} steps on the second- "
        "and third-order solvers, the same solvers plain at every count from 10 to 50 steps, AdaptiveDiffusion and "
        "diffusers' cache hooks on DPM-Solver++ 2M at 50 steps; held-out seeds 1000-1015. Compute: fraction of the "
        f"network FLOPs of {SOLVERS[FULL_SAMPLER]} at {STEPS} steps (attention included). PSNR in dB against the "
        "converged solution of each solver's ODE (DPM-Solver++ and UniPC start at the VP schedule's first noise "
        "level, Euler and Heun at `sigma_max`) and against the same solver's 50-step run. The raw results are in "
        "`docs/results/front-data/unet-karras.json`.",
        "",
    ]
    if image_dir is not None:
        _plot(methods, image_dir / PLOT_NAME)
        lines += [f"![front, U-Net, Karras](img/{PLOT_NAME})", ""]
    lines += [
        "## SADA's envelope against the plain solvers' and the cache peers' at every compute level",
        "",
        "At each compute level where both have a point: the best SADA point (any solver, the dial at 50 steps or the "
        "default or one notch below it at another step count) against the best plain solver or cache peer at no more "
        "compute. Both sides sample every step count (plain; SADA below 38 steps, every even one above): on this "
        "network a grid's "
        "fidelity scatters by 2-5 dB between neighbouring step counts, the same way on every seed set, so each "
        "envelope follows its luckiest grids.",
        "",
    ]
    lines += envelope_rows(methods, SADA_GROUPS, ("plain", *PEER_GROUPS), "best plain solver or cache peer") + [""]
    lines += [
        "## On top of each solver: SADA on it against the same solver plain",
        "",
        "The same comparison restricted to one solver: SADA's points on it (the dial at 50 steps, the default and one "
        "notch below it at other step counts) against that solver alone: SADA on top of the solver against the solver. "
        "Under each table, every SADA point on the solver against the solver's plain trend.",
        "",
    ]
    for sampler in SADA_STEPS_SOLVERS[::-1]:
        lines += [f"### {SOLVERS[sampler]}", ""]
        lines += envelope_rows(solver_points(methods, sampler), SADA_GROUPS, ("plain",), f"{SOLVERS[sampler]} plain")
        lines += ["", trend_summary(methods, sampler), ""]
    lines += ["## Each SADA point against the best alternative at no more compute", ""]
    lines += comparison_rows(methods) + [""]
    lines += [
        "## Every point",
        "",
        "| method | compute | evaluations | block rows | PSNR vs ODE | PSNR vs own 50-step run | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in sorted(methods.items(), key=lambda kv: (-kv[1].get("compute", -1), kv[0])):
        if "error" in m:
            lines.append(f"| {name} | -- | -- | -- | cannot run: {m['error'][:160]} | | |")
            continue
        note = " (changed nothing: identical to the plain run)" if m.get("identical_to_full") else ""
        lines.append(
            f"| {name}{note} | {m['compute']:.3f} | {m['evaluations']:.2f} | {m['block_rows']:.3f} | "
            f"{m['psnr_ode']:.2f} | {m['psnr_full']:.2f} | {m['seconds']:.1f} |"
        )
    lines.append("")
    return "\n".join(lines)


def _plot(methods: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines: dict = {}
    name_of = {  # the label of a sada_steps point: its step count (and tolerance when not the default)
        (m["compute"], m["psnr_ode"]): name.split(", ", 1)[1].replace("default, ", "").replace("tolerance ", "")
        for name, m in methods.items()
        if m.get("group") == "sada_steps" and "error" not in m
    }
    for name, m in methods.items():
        if "error" in m or m.get("identical_to_full"):
            continue
        solver = SOLVERS[m["sampler"]]
        label = {
            "plain": f"plain {solver}",
            "sada": f"SADA on {solver}",
            "sada_steps": f"SADA on {solver}, default at {min(SADA_STEPS)}-{max(SADA_STEPS)} steps"
            if "tolerance" not in name
            else f"SADA on {solver}, 0.02 at {min(SADA_STEPS_TOLERANCES)}-{max(SADA_STEPS_TOLERANCES)} steps",
            "adaptive": f"AdaptiveDiffusion on {solver}",
        }.get(m["group"], name.split(",")[0])
        lines.setdefault(label, []).append((m["compute"], m["psnr_ode"], m.get("knob"), m["group"]))
    fig, ax = plt.subplots(figsize=(11, 5.5))
    colors = dict(zip(SOLVERS.values(), ("C0", "C1", "C2", "C3", "C4")))
    for label, points in sorted(lines.items()):
        points.sort(key=lambda p: (p[0], p[1]))
        group = points[0][3]
        solver = next((s for s in SOLVERS.values() if label.endswith(s)), None)
        style = {"plain": "--s", "sada": "-o", "sada_steps": "v" if "0.02 at" in label else "D"}.get(group, ":^")
        color = colors.get(solver) if group in ("plain", "sada", "sada_steps") else None
        ax.plot([p[0] for p in points], [p[1] for p in points], style, label=label, markersize=4, color=color)
        if group in SADA_GROUPS and "DPM-Solver" not in label:  # 2M and 3M lie near UniPC's: one set of labels
            for c, p, knob, _ in points:
                text = "default" if knob is None else f"{knob:g}"
                if group == "sada_steps":
                    text = name_of.get((c, p), text)
                    tolerance = text.startswith("0.02")
                    steps = text.split(" ")[1 if tolerance else 0]
                    if steps not in (LABELLED_TOLERANCE_STEPS if tolerance else LABELLED_STEPS):
                        continue  # every even count: a few labels keep the plot legible
                ax.annotate(text, (c, p), fontsize=6)
    plot_envelopes(ax, methods, ((SADA_GROUPS, "SADA's envelope"), (("plain",), "the plain solvers' envelope")))
    ax.set_xlabel(f"compute (fraction of {SOLVERS[FULL_SAMPLER]} {STEPS} steps' network FLOPs)")
    ax.set_ylabel("PSNR vs ODE solution (dB)")
    ax.set_title(
        f"shipped U-Net, Karras sigmas (SADA: dial at 50 steps, default at {SADA_STEPS[0]}-{SADA_STEPS[-1]} steps, "
        f"0.02 at {min(SADA_STEPS_TOLERANCES)}-{max(SADA_STEPS_TOLERANCES)})",
        fontsize=10,
    )
    ax.set_xlim(0, 1.2)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, bbox_to_anchor=(1.01, 1), loc="upper left")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
