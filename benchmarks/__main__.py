"""``python -m benchmarks``: the harness's command line (``demo``, ``bench``, ``bench-report``)."""

from benchmarks.cli import main

raise SystemExit(main())
