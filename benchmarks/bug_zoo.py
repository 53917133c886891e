"""The DP bug zoo and the white-box audit's soundness and power, on the embedded default.

    python benchmarks/bug_zoo.py [zoo] [soundness] [power]
        zoo        every fault of `dpbench.methods.faults` at claimed ε 1 and 8: true ε, each audit's ε̂,
                   flagged or not                                                -> benchmarks/bug-zoo.md
        soundness  20 seeds of a correct mechanism at ε 1 and 8: no flag, every bound ≤ ε
                                                                                 -> benchmarks/audit-soundness.md
        power      the default dpsgd run (150 steps) at ε 8, seeds 0-2, and ε 1: one-run and parametric ε̂
                   against the accounted ε, and training wall time with and without the audit
                                                                                 -> benchmarks/audit-power.md

Faults are injected into the real code path (`broken_mechanism`); no spec reaches them. Black-box:
the `loss` attack's ε̂ on 400 members and non-members of the trained model. Run it on an otherwise
idle machine: `power` times training.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

from dpbench import phases
from dpbench.attacks.gradient_canaries import AUDIT_SHARES
from dpbench.methods.faults import FAULTS, broken_mechanism
from dpbench.run_folder import RunFolder
from dpbench.spec import AUDIT_CANARIES, RunSpec
from dpbench.systems import environment

HERE = Path(__file__).parent
# the zoo's configuration: a short run of the embedded default, so 14 runs fit in minutes
ZOO = {
    "training.n_train": 400,
    "training.batch_size": 16,
    "training.steps": 100,
    "attacks": ["loss"],
    "audit.references": 0,
}
SOUND = {"training.n_train": 200, "training.batch_size": 8, "training.steps": 60, "attacks": [], "audit.references": 0}


def run(spec: RunSpec, fault: str | None = None, blackbox: bool = False):
    """(white-box section, black-box loss attack or None, training wall s, privacy record)."""
    with broken_mechanism(fault) if fault else nullcontext():
        p = phases.prepare(phases.check(spec), with_base=blackbox)
        trained = phases.train(p)
    loss = None
    if blackbox:
        with tempfile.TemporaryDirectory() as tmp:
            folder = RunFolder.of(Path(tmp), spec.run_id()).create()
            p.base.to(spec.device)
            refs = phases.references(p, trained.report.epochs, folder, log=lambda *a: None)
            section, _ = phases.audit(p, refs, folder)
            loss = section.attacks["loss"] if section is not None else None
    return trained.report.whitebox, loss, trained.wall_s, trained.report.privacy


def fmt(x, digits: int = 2) -> str:
    if x is None:
        return "—"
    if isinstance(x, float) and math.isinf(x):
        return "∞"
    return f"{x:.{digits}f}"


def header(title: str, config: str) -> list[str]:
    cpu = environment("cpu")["devices"][0].get("name", "cpu")
    return [
        f"# {title}",
        "",
        f"`python benchmarks/bug_zoo.py`, {cpu}; embedded tiny-llava and the embedded "
        f"ScienceQA-format sample (neither the real model nor the real data). {config}",
        "",
    ]


def zoo(only: list[str] | None = None) -> None:
    """Every fault's rows; with `only`, those faults' rows are re-run and replaced in the file."""
    lines = header(
        "The DP bug zoo (embedded default)",
        "dpsgd, n_train 400, expected batch 16, 100 steps, 50 000 gradient canaries on the audit block "
        "(the clipping fault's row: on the model's own coordinates), seed 0, 95 % confidence. True ε by the PRV "
        "accountant (RDP where σ < 0.2; shuffling: without amplification, an upper bound). A parametric ε̂ of "
        "— : the estimated noise multiplier is below 0.2, where the PRV accountant cannot go (ε in the tens or more).",
    ) + [
        "| fault | claimed ε | accounted ε | true ε | parametric ε̂ (low end) | named off | f-DP ε̂ | Steinke ε̂ "
        "| black-box ε̂ (loss) | flagged |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in only or ["none", *sorted(FAULTS)]:
        fault = None if name == "none" else FAULTS.get(name)
        placement = "model" if name == "clip-skip-language-model" else "audit-block"
        for eps in (1.0, 8.0):
            spec = RunSpec(method="dpsgd").replace(
                **{**ZOO, "privacy.epsilon": eps, "audit.canary_placement": placement}
            )
            w, loss, _, pr = run(spec, None if name == "none" else name, blackbox=True)
            priv = w["accounted_epsilon"]
            p = w.get("parametric") or {}
            batch = pr.sample_rate * spec.training.n_train
            true = (
                priv
                if fault is None
                else fault.true_epsilon(pr.noise_multiplier, pr.sample_rate, spec.training.steps, pr.delta, batch)
            )
            unseen = fault and fault.unseen_by_canaries and placement == "audit-block"
            why = f" ({fault.unseen_by_canaries})" if unseen and not w["violation"] else ""
            lines.append(
                f"| {name}{' (canaries on the model)' if placement == 'model' else ''} | {eps:g} | {fmt(priv)} | "
                f"{fmt(true)} | {fmt(p.get('epsilon_lower_bound'))} | {', '.join(p.get('off', [])) or '—'} | "
                f"{fmt(w['epsilon_lower_bound_fdp'])} | {fmt(w['epsilon_lower_bound'])} | "
                f"{fmt(loss['epsilon_lower_bound'] if loss else None)} | "
                f"{'**yes**' if w['violation'] else 'no'}{why} |"
            )
            print(lines[-1], file=sys.stderr)
    path = HERE / "bug-zoo.md"
    if only and path.is_file():  # the header as now; the other faults' rows as they were
        fresh = [ln for ln in lines if _key(ln) not in (None, "fault")]
        keys, placed, rows = {_key(ln) for ln in fresh}, set(), []
        for ln in path.read_text().splitlines():
            key = _key(ln)
            if key in (None, "fault"):
                continue
            if key not in keys:
                rows.append(ln)
            elif key not in placed:
                rows += [r for r in fresh if _key(r) == key]
                placed.add(key)
        lines = [ln for ln in lines if ln not in fresh] + rows
    path.write_text("\n".join(lines) + "\n")


def _key(line: str) -> str | None:
    """A table row's first cell (the fault's name)."""
    return line.split("|")[1].strip() if line.startswith("| ") else None  # None for the separator |---|


def soundness(seeds: int = 20) -> None:
    lines = header(
        "The white-box audit on a correct mechanism: soundness (embedded default)",
        f"dpsgd, n_train 200, expected batch 8, 60 steps, 50 000 gradient canaries on the audit block, seeds "
        f"0-{seeds - 1}, 95 % confidence.",
    ) + [
        "| claimed ε | accounted ε | flagged runs | max one-run ε̂ | max parametric ε̂ (low end) | mean parametric ε̂ |",
        "|---|---|---|---|---|---|",
    ]
    for eps in (1.0, 8.0):
        ws = []
        for seed in range(seeds):
            spec = RunSpec(method="dpsgd").replace(**{**SOUND, "privacy.epsilon": eps, "training.seed": seed})
            ws.append(run(spec)[0])
            print(eps, seed, ws[-1]["epsilon_one_run"], ws[-1]["parametric"]["epsilon_lower_bound"], file=sys.stderr)
        low = [w["parametric"]["epsilon_lower_bound"] for w in ws]
        lines.append(
            f"| {eps:g} | {fmt(ws[0]['accounted_epsilon'], 3)} | {sum(w['violation'] for w in ws)} / {seeds} | "
            f"{fmt(max(w['epsilon_one_run'] for w in ws))} | {fmt(max(low))} | "
            f"{fmt(sum(w['parametric']['epsilon'] for w in ws) / seeds)} |"
        )
    (HERE / "audit-soundness.md").write_text("\n".join(lines) + "\n")


def power() -> None:
    lines = header(
        "The white-box audit's power and cost at the default run (embedded default)",
        f"dpsgd at its defaults (150 steps, expected batch 64, PRV accounting), {AUDIT_CANARIES:,} gradient "
        "canaries on the audit block, 95 % confidence for the three audits together (shares of the 5 %: "
        + ", ".join(f"{k} {v:.0%}" for k, v in AUDIT_SHARES.items())
        + "). Cost: the same run with `--gradient-canaries 0`, training wall time, on an otherwise idle machine.",
    ) + [
        "| target ε | seed | accounted ε (PRV) | RDP ε | Steinke ε̂ | f-DP ε̂ | one-run / ε | parametric ε̂ "
        "(low end) | parametric / ε | σ̂·C, Ĉ, q̂ | flagged |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    plain, audited = [], []
    for eps, seed in ((8.0, 0), (8.0, 1), (8.0, 2), (1.0, 0)):
        spec = RunSpec(method="dpsgd").replace(**{"privacy.epsilon": eps, "training.seed": seed, "attacks": []})
        w, _, wall, pr = run(spec)
        audited.append(wall)
        if seed == 0:
            plain.append(run(spec.replace(**{"audit.gradient_canaries": 0}))[2])
        p, acc = w["parametric"], w["accounted_epsilon"]
        lines.append(
            f"| {eps:g} | {seed} | {fmt(acc, 3)} | {fmt(pr.epsilon_rdp, 3)} | {fmt(w['epsilon_lower_bound'])} | "
            f"{fmt(w['epsilon_lower_bound_fdp'])} | {fmt(w['epsilon_one_run'] / acc)} | "
            f"{fmt(p['epsilon_lower_bound'])} | {fmt(p['epsilon_lower_bound'] / acc)} | "
            f"{p['noise_std'][0]:.3f}, {p['clip_norm'][0]:.3f}, {p['sample_rate'][0]:.4f} | "
            f"{'**yes**' if w['violation'] else 'no'} |"
        )
        print(lines[-1], file=sys.stderr)
    lines += [
        "",
        f"Training wall time with / without the audit (ε 8 and ε 1, seed 0): "
        + ", ".join(f"{a:.0f} s / {b:.0f} s = {a / b:.2f}×" for a, b in zip([audited[0], audited[3]], plain)),
    ]
    (HERE / "audit-power.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    parts = sys.argv[1:] or ["zoo", "soundness", "power"]
    for part in parts:
        t0 = time.perf_counter()
        if part.startswith("zoo:"):  # zoo:FAULT[,FAULT]: re-run those rows only
            zoo(part[4:].split(","))
        else:
            {"zoo": zoo, "soundness": soundness, "power": power}[part]()
        print(f"{part}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
