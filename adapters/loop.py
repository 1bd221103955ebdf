"""SADA for a hand-written sampling loop (or an evaluation inside a training loop).

Declare the schedule and the prediction kind once; then, per step, ask which rows must run the
network, run only those, and let the session fill in the rest::

    from sada.adapters.loop import SADASession

    with SADASession(grid, kind="epsilon", config=SADAConfig()) as sada:
        for n in range(grid.num_steps):
            rows = sada.rows_to_compute(n, x)            # LongTensor: run the network on x[rows] only
            eps = sada.complete(n, x, model(x[rows], t[n]))
            x = my_solver_step(x, eps, n)
    print(sada.summary())

or in one call per step: ``eps = sada.step(n, x, lambda x_rows, rows: model(x_rows, t[n]))``.

``sample_scaling="edm"`` declares that the loop keeps ``x~ = x / alpha`` (k-diffusion / EDM style);
the default ``"schedule"`` means ``x = alpha x0 + sigma eps`` of the declared schedule.

The session itself is :class:`sada.torch_backend.session.SADASession`, the one every adapter composes.
"""

from __future__ import annotations

from sada.torch_backend.session import SADASession

__all__ = ["SADASession"]
