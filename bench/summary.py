"""The short table printed at the end of `dpbench run` and `dpbench audit`."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dpbench.benchmark_report import PART_NAMES, SHARE_OF
from dpbench.run_folder import RunFolder
from dpbench.run_result import RunResult


def _num(x: float | None, digits: int = 3) -> str:
    """A figure, or "unbounded" where the record holds null (the accountant could not go that low)."""
    return "unbounded" if x is None else f"{x:.{digits}f}"


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _parts(breakdown: dict) -> str:
    """The parts of a peak, each with how it was had; a part outside the peak, or a share of
    another part, says so."""
    out = []
    for name, part in breakdown["components"].items():
        size = "unknown" if part["bytes"] is None else _mib(part["bytes"])
        where = "" if part["in_peak"] else ", outside the peak"
        where += f", within {PART_NAMES[SHARE_OF[name]].lower()}" if name in SHARE_OF else ""
        out.append(f"{PART_NAMES[name].lower()} {size} ({part['how']}{where})")
    return ", ".join(out)


def _phase_parts(parts: dict[str, float]) -> str:
    """One line: each phase's parts, "audit: references 31.2 s, forward 4.0 s, attacks 0.1 s, ...";
    the attacks' own statistics summed (the result has each)."""
    by_phase: dict[str, dict[str, float]] = {}
    for key, wall in parts.items():
        phase, name = key.split(".", 1)
        name = name.split(".")[0]  # attacks.lira, attacks.rmia, ... -> attacks
        by_phase.setdefault(phase, {})[name] = by_phase.get(phase, {}).get(name, 0.0) + wall
    return "; ".join(
        f"{phase.replace('_', '-')}: "
        + ", ".join(f"{name.replace('_', '-')} {wall:.1f} s" for name, wall in names.items())
        for phase, names in by_phase.items()
    )


def print_summary(result: RunResult, folder: RunFolder) -> None:
    d, m, u, p, s = result.dataset, result.model, result.utility, result.privacy, result.systems
    table = Table(title=f"dpbench run {result.run_id}", show_header=False)
    table.add_row("data", f"{d.task} ({d.source}), {d.n_train} train / {d.n_test} {u.split}")
    table.add_row(
        "model", f"{m.name} ({m.source}), {m.parameters_trainable:,} of {m.parameters_total:,} params trained"
    )
    for name, value in u.metrics.items():
        zs = m.zero_shot.get(name)
        table.add_row(name, f"{value:.4f}" + (f"  (zero-shot {zs:.4f})" if zs is not None else ""))
    if p["private"]:
        table.add_row(
            "privacy",
            f"ε = {p['epsilon']:.3f} (target {p['target_epsilon']}), δ = {p['delta']:.2e}, "
            f"σ = {p['noise_multiplier']:.3f}, q = {p['sample_rate']:.4f}, {p['steps']} steps, "
            f"{p['accountant']}" + (f" (RDP: ε = {p['epsilon_rdp']:.3f})" if p.get("epsilon_rdp") is not None else ""),
        )
    else:
        table.add_row("privacy", "non-private (no guarantee)")
    audit = result.audit
    if audit is not None and audit.attacks:  # empty when every requested attack was skipped
        (best, a), (top, b) = audit.strongest("auc"), audit.strongest("epsilon_lower_bound")
        table.add_row("audit", f"best AUC {a['auc']:.3f} ({best}), largest ε̂ {b['epsilon_lower_bound']:.3f} ({top})")
    if audit is not None and audit.canary:
        c = audit.canary
        table.add_row(
            "canary audit",
            f"ε̂ {c['epsilon_lower_bound']:.3f} ({c['correct']}/{c['guesses']} right of "
            f"{c['m']} canaries); utility is of a canary-trained model",
        )
    if audit is not None and audit.whitebox:
        w = audit.whitebox
        flags = [k for k, v in (w.get("flags") or {}).items() if v]
        flag = f"  VIOLATION ({', '.join(flags) or 'Steinke'}): less private than accounted" if w["violation"] else ""
        table.add_row(
            "white-box audit",
            f"one-run ε̂ {w.get('epsilon_one_run', w['epsilon_lower_bound']):.3f} (f-DP "
            f"{w['epsilon_lower_bound_fdp']:.3f}, Steinke {w['epsilon_lower_bound']:.3f}), {w['m']} gradient "
            f"canaries{flag}",
        )
        p = w.get("parametric")
        if p and p.get("epsilon_lower_bound") is not None:
            table.add_row(
                "per-step audit",
                f"ε̂ ≥ {p['epsilon_lower_bound']:.3f} (estimate {_num(p['epsilon'])}; σ̂·C {_num(p['noise_std'][0])}, "
                f"Ĉ {_num(p['clip_norm'][0])}, q̂ {_num(p['sample_rate'][0], 4)})"
                + (f"; off: {', '.join(p['off'])}" if p["off"] else ""),
            )
    for rec in s.peak_memory:
        table.add_row(
            f"peak memory ({rec['device']}" + (f", rank {rec['rank']})" if "rank" in rec else ")"),
            f"{_mib(rec['peak_bytes'])} {escape('[' + rec['kind'] + ']')} {rec.get('name', '')}",  # not rich markup
        )
    for b in s.memory_breakdown or []:
        table.add_row(f"peak breakdown ({b['device']}" + (f", rank {b['rank']})" if "rank" in b else ")"), _parts(b))
    table.add_row(
        "train throughput",
        f"{s.train['samples_per_s']:.1f} samples/s, {s.train['tokens_per_s']:.0f} tokens/s, {s.train['wall_s']:.1f} s",
    )
    if s.phases:
        table.add_row(
            "wall time", ", ".join(f"{name.replace('_', '-')} {wall:.0f} s" for name, wall in s.phases.items())
        )
    if s.phase_parts:
        table.add_row("wall time parts", _phase_parts(s.phase_parts))
    table.add_row("visual tokens", f"{s.visual_tokens['after']} of {s.visual_tokens['before']} per image")
    table.add_row("result", str(folder.result))
    Console().print(table)
