"""The ``sada`` console command: a thin entry point to the benchmark harness.

The commands (``demo``, ``bench``, ``bench-report``) live in the repository's ``benchmarks/`` folder, which the
wheel does not ship (it holds the training script, the metrics and the model weights the benchmark reads). In a
checkout installed with ``make install`` the folder is on the environment's path, so ``sada bench`` works; from a
plain ``pip install`` of the wheel, this command says where to find it.
"""

from __future__ import annotations

__all__ = ["main"]

HARNESS_MISSING = (
    "sada: the demo and benchmark commands belong to the benchmark harness in the repository's "
    "benchmarks/ folder, which the installed package does not ship. Run them from a checkout of the "
    "repository: `make install`, then `sada --help` or `python -m benchmarks --help`."
)


def main(argv: list[str] | None = None) -> int:
    """Run ``benchmarks.cli.main(argv)``; exit with :data:`HARNESS_MISSING` when the harness is not importable."""
    try:
        from benchmarks.cli import main as harness_main
    except ModuleNotFoundError as exc:
        if exc.name not in ("benchmarks", "benchmarks.cli"):
            raise
        raise SystemExit(HARNESS_MISSING) from None
    return harness_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
