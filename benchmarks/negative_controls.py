"""The white-box audit on the embedded default: negative controls and its cost, in one invocation.

    python benchmarks/negative_controls.py [controls] [cost]
                                    # writes benchmarks/negative-controls.md, benchmarks/whitebox-cost.md

Trains dpsgd (default spec, 1000 gradient canaries) at a claimed ε = 1 three ways: the real
mechanism, one adding a tenth of the noise it accounts for, one skipping clipping on the
language model (`dpbench.methods.faults`; no spec reaches these), and records each white-box
bound. Then the default ε = 8 run without and with canaries, interleaved over two rounds:
training wall time as a ratio of medians. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import statistics
import sys
from contextlib import nullcontext
from pathlib import Path

from dpbench import phases
from dpbench.methods.faults import broken_mechanism
from dpbench.spec import RunSpec
from dpbench.systems import environment

OUT = Path(__file__).with_name("negative-controls.md")
COST = Path(__file__).with_name("whitebox-cost.md")
CANARIES = {"audit.gradient_canaries": 1000}


def train(spec: RunSpec, fault: str | None = None):
    with broken_mechanism(fault) if fault else nullcontext():
        return phases.train(phases.prepare(spec))


def controls() -> list[tuple[str, dict]]:
    rows = []
    for label, fault in (
        ("correct", None),
        ("noise x 0.1", "noise"),
        ("clipping skipped on language_model", "clipping"),
    ):
        spec = RunSpec(method="dpsgd").replace(**{"privacy.epsilon": 1.0, **CANARIES})
        w = train(spec, fault).report.whitebox
        rows.append((label, w))
        print(label, w["epsilon_lower_bound"], w["violation"], file=sys.stderr)
    return rows


def cost(rounds: int = 2) -> tuple[dict, list[float], list[float]]:
    """Training wall time of the default run without and with canaries, interleaved over rounds."""
    plain, audited, whitebox = [], [], None
    for _ in range(rounds):
        plain.append(train(RunSpec(method="dpsgd")).wall_s)
        trained = train(RunSpec(method="dpsgd").replace(**CANARIES))
        audited.append(trained.wall_s)
        whitebox = trained.report.whitebox
    return whitebox, plain, audited


def header(title: str) -> list[str]:
    cpu = environment("cpu")["devices"][0].get("name", "cpu")
    return [
        f"# {title}",
        "",
        f"`python benchmarks/negative_controls.py`, {cpu}, nothing else running; embedded tiny-llava and the "
        "embedded ScienceQA-format sample (neither the real model nor the real data). dpsgd, 150 steps, "
        "1000 gradient canaries, seed 0.",
        "",
    ]


def write_controls(rows: list[tuple[str, dict]]) -> None:
    lines = header("White-box audit: negative controls (embedded default)") + [
        "| mechanism (claims ε = 1) | accounted ε | white-box ε̂ (Steinke) | ceiling | ε̂ f-DP | right / guesses "
        "| violation |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, r in rows:
        lines.append(
            f"| {label} | {r['accounted_epsilon']:.3f} | {r['epsilon_lower_bound']:.3f} | {r['ceiling']:.2f} | "
            f"{r['epsilon_lower_bound_fdp']:.3f} | {r['correct']} / {r['guesses']} | "
            f"{'**yes**' if r['violation'] else 'no'} |"
        )
    OUT.write_text("\n".join(lines) + "\n")


def write_cost(w: dict, plain: list[float], audited: list[float]) -> None:
    ratio = statistics.median(audited) / statistics.median(plain)
    lines = header("White-box audit: its cost (embedded default)") + [
        f"Default run (ε = 8): white-box ε̂ {w['epsilon_lower_bound']:.3f} (f-DP {w['epsilon_lower_bound_fdp']:.3f}, "
        f"ceiling {w['ceiling']:.2f}). Training wall time, {len(plain)} interleaved rounds, median with canaries / "
        f"without: {statistics.median(audited):.1f} s / {statistics.median(plain):.1f} s = {ratio:.3f} "
        f"(rounds: {', '.join(f'{a:.1f}/{b:.1f}' for a, b in zip(audited, plain))}).",
        "",
    ]
    COST.write_text("\n".join(lines))


def main(parts: list[str]) -> None:
    if "controls" in parts:
        write_controls(controls())
        print(f"wrote {OUT}", file=sys.stderr)
    if "cost" in parts:
        write_cost(*cost())
        print(f"wrote {COST}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:] or ["controls", "cost"])
