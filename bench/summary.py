"""The short table printed at the end of `dpbench run`."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def print_summary(result: dict, run_dir: Path) -> None:
    u, p, s = result["utility"], result["privacy"], result["systems"]
    table = Table(title=f"dpbench run {result['run_id']}", show_header=False)
    table.add_row("data", f"{result['dataset']['task']} ({result['dataset']['source']}), {result['dataset']['n_train']} train / {result['dataset']['n_test']} {u.get('split', 'test')}")
    table.add_row("model", f"{result['model']['name']} ({result['model']['source']}), {result['model']['parameters_trainable']:,} of {result['model']['parameters_total']:,} params trained")
    for name, value in u["metrics"].items():
        zs = result["model"]["zero_shot"].get(name)
        table.add_row(name, f"{value:.4f}" + (f"  (zero-shot {zs:.4f})" if zs is not None else ""))
    if p["private"]:
        table.add_row("privacy", f"ε = {p['epsilon']:.3f} (target {p['target_epsilon']}), δ = {p['delta']:.2e}, σ = {p['noise_multiplier']:.3f}, q = {p['sample_rate']:.4f}, {p['steps']} steps, {p['accountant']}")
    else:
        table.add_row("privacy", "non-private (no guarantee)")
    if result["audit"] and result["audit"]["attacks"]:  # empty when every requested attack was skipped
        best = max(result["audit"]["attacks"].items(), key=lambda kv: kv[1]["auc"])
        eps_hat = max(result["audit"]["attacks"].items(), key=lambda kv: kv[1]["epsilon_lower_bound"])
        table.add_row("audit", f"best AUC {best[1]['auc']:.3f} ({best[0]}), largest ε̂ {eps_hat[1]['epsilon_lower_bound']:.3f} ({eps_hat[0]})")
    if result["audit"] and result["audit"].get("canary"):
        c = result["audit"]["canary"]
        table.add_row("canary audit", f"ε̂ {c['epsilon_lower_bound']:.3f} ({c['correct']}/{c['guesses']} right of {c['m']} canaries); utility is of a canary-trained model")
    for rec in s["peak_memory"]:
        table.add_row(f"peak memory ({rec['device']})", f"{_mib(rec['peak_bytes'])} [{rec['kind']}] {rec.get('name', '')}")
    table.add_row("train throughput", f"{s['train']['samples_per_s']:.1f} samples/s, {s['train']['tokens_per_s']:.0f} tokens/s, {s['train']['wall_s']:.1f} s")
    table.add_row("visual tokens", f"{s['visual_tokens']['after']} of {s['visual_tokens']['before']} per image")
    table.add_row("result", str(run_dir / "result.json"))
    Console().print(table)
