"""Which diffusers schedulers ``enable`` accepts: every class in ``diffusers.schedulers`` whose name ends in
``Scheduler``, built from its default config and enabled on a tiny pipeline. The list in docs/howto-diffusers.md is
this enumeration (the test compares them), and the messages the docs quote are ones the program prints."""

import re
import warnings
from pathlib import Path

import pytest

diffusers = pytest.importorskip("diffusers")

import sada.adapters.diffusers as sada_d  # noqa: E402
from sada.adapters._diffusers_scheduler import describe_scheduler  # noqa: E402
from tests import diffusers_fixtures as fx  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs"
BEGIN, END = "<!-- scheduler-table:begin -->", "<!-- scheduler-table:end -->"


def _one_line(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def enumerate_schedulers() -> list[tuple[str, str, str]]:
    """``(name, outcome, reason)`` for every scheduler class: ``accepted``, ``accepted, runs exactly``, ``refused``
    (the message ``enable`` raises) or ``not built`` (its default config does not construct)."""
    import diffusers.schedulers as schedulers

    pipe = fx.sd_pipeline()
    rows = []
    with warnings.catch_warnings():  # diffusers' own deprecation notes on 51 default configs; none is sada's
        warnings.filterwarnings("ignore", module=r"diffusers\.")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        for name in sorted(n for n in dir(schedulers) if n.endswith("Scheduler")):
            rows.append(_outcome(pipe, getattr(schedulers, name), name))
    return rows


def _outcome(pipe, cls, name) -> tuple[str, str, str]:
    try:
        scheduler = cls()
    except Exception as exc:  # noqa: BLE001 - recorded: the class needs arguments
        return name, "not built", f"{type(exc).__name__} from its default constructor"
    pipe.scheduler = scheduler
    try:
        sada_d.enable(pipe)
    except (ValueError, TypeError) as exc:
        return name, "refused", _one_line(exc)
    sada_d.disable(pipe)
    info = describe_scheduler(scheduler)
    if info.noise:
        return name, "accepted, runs exactly", _one_line(info.noise)
    stages = "two evaluations per step" if info.two_stage else "one evaluation per step"
    return name, "accepted", (f"{info.family} grid, {info.kind}, {info.scaling} scaling, order {info.order}, {stages}")


def table(rows) -> str:
    lines = ["| scheduler (default config) | `enable` | what it prints or how SADA runs it |", "|---|---|---|"]
    lines += [f"| `{name}` | {outcome} | {reason} |" for name, outcome, reason in rows]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def rows():
    return enumerate_schedulers()


def test_the_docs_list_of_schedulers_is_the_enumeration(rows):
    text = (DOCS / "howto-diffusers.md").read_text()
    assert BEGIN in text and END in text
    documented = text.split(BEGIN)[1].split(END)[0].strip()
    assert documented == table(rows), "regenerate with: python -m tests.test_diffusers_schedulers"
    accepted = {name for name, outcome, _ in rows if outcome == "accepted"}
    assert {
        "DEISMultistepScheduler",
        "DPMSolverSinglestepScheduler",
        "DPMSolverMultistepScheduler",
        "EulerDiscreteScheduler",
        "UniPCMultistepScheduler",
        "HeunDiscreteScheduler",
    } <= accepted


def test_every_error_message_the_docs_quote_is_one_the_program_prints(rows):
    printed = [f"ValueError: {reason}" for _, outcome, reason in rows if outcome == "refused"]
    quoted = []
    for page in ("howto-diffusers.md", "troubleshooting.md"):
        quoted += re.findall(r"`(ValueError: sada: [^`]*)`", (DOCS / page).read_text())
    assert quoted
    for quote in quoted:
        head = " ".join(quote.split("...")[0].split())  # a quote may wrap over lines in the page
        assert any(message.startswith(head) for message in printed), quote
    assert not any("is not supported; supported:" in q for q in quoted)


if __name__ == "__main__":
    print(table(enumerate_schedulers()))
