"""The numbers of the k-diffusion compatibility table (docs/howto-k-diffusion.md): model calls saved and RMS against
the unwrapped sampler, default ``SADAConfig()``, on the test module's closed-form mixture denoiser::

    .venv/bin/python -m tests.measure_kdiffusion_table
"""

from sada.adapters import k_diffusion as kd
from tests.test_k_diffusion_adapter import K, MixtureDenoiser, _noise, _rms, _sigmas

SAMPLERS = ("sample_euler", "sample_dpmpp_2m", "sample_heun", "sample_dpm_2", "sample_lms")


def main() -> list[tuple[str, float, float]]:
    rows = []
    for name in SAMPLERS:
        sampler = getattr(K, name)
        plain_model, model = MixtureDenoiser(), MixtureDenoiser()
        plain = sampler(plain_model, _noise(), _sigmas(), disable=True)
        out = sampler(kd.wrap(model, _sigmas(), sampler=sampler), _noise(), _sigmas(), disable=True)
        rows.append((name, plain_model.calls / model.calls, _rms(out, plain)))
        print(f"| `{name}` | {rows[-1][1]:.2f}x | {rows[-1][2]:.1e} |")
    return rows


if __name__ == "__main__":
    main()
