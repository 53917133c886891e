"""The few lines `dpbench unlearn` prints: what was forgotten, how well, at what cost."""

from __future__ import annotations

from typing import Any

import click


def fmt(x: Any, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def print_unlearn_summary(result: dict[str, Any]) -> None:
    s, m, sy, r = result["spec"], result["metrics"], result["systems"], result["request"]
    click.echo(
        f"{s['method']} on {result['parent']['method']} parent {result['parent']['run_id']}: {s['forget']} "
        f"({r['n_forget']} forgotten, {r['n_retain']} retained; yardstick: {r['yardstick']})"
    )
    rows = [
        ("efficacy", m["efficacy"]),
        ("generality", m["generality"]),
        (f"test {m['primary_metric']}", m["test_metric"]),
    ]
    rows += [("neighbours", m["neighbour_metric"]), ("fluency (ppl)", m["fluency_perplexity"])]
    click.echo(f"  {'':16s} {'parent':>8s} {'unlearned':>10s} {'retrain':>8s}")
    for name, v in rows:
        if v is not None:
            click.echo(f"  {name:16s} {fmt(v['parent']):>8s} {fmt(v['unlearned']):>10s} {fmt(v.get('retrain')):>8s}")
    d = m["distance_to_retrain"]
    if d is not None:
        click.echo(
            f"  forget-set losses vs retrain: KS {fmt(d['unlearned']['ks'])} (p {d['unlearned']['p_value']:.2g}); "
            f"the parent's KS {fmt(d['parent']['ks'])}"
        )
    click.echo(f"  wall {sy['wall_s']:.1f} s, {sy['speedup_over_retrain']:.1f}× faster than retrain")
    a = result["audit"]
    if a is not None:
        u = a["ulira"]
        verdict = "NOT unlearned: the forget set is still detectable" if a["not_unlearned"] else "no evidence left"
        click.echo(
            f"  audit ({a['pairs']} shadow pairs): U-LiRA AUC {u['auc']:.3f}"
            + (f" (p {u['p_value']:.2g})" if "p_value" in u else "")
            + f", ε̂ ≥ {u['epsilon_lower_bound']:.2f} "
            f"({a['confidence']:.0%}), PrivLeak {a['privleak']:+.3f}: {verdict}"
        )
        g = a["group_privacy"]
        if g is not None:
            bound = "vacuous (δ term ≥ 1)" if g["vacuous"] else f"({g['epsilon']:.3g}, {g['delta']:.2g})"
            click.echo(f"  the DP parent's group-privacy bound for the {g['k']} forgotten: {bound}")
