"""The leaderboard's unlearning section: `dpbench unlearn` results per task, one row per (parent
method and ε, forget request, unlearning method), mean ± sd over seeds, and a plot of efficacy
against specificity."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable

from dpbench.leaderboard.aggregate import Stat
from dpbench.leaderboard.columns import fmt_stat, fmt_target

KIND = "dpbench-unlearn"
NOTE = (
    "dpbench unlearn: each row starts from finished runs of the parent method (saved with their checkpoint) and "
    "makes them forget the request; retrain (the parent's recipe without the forget set) is the gold standard. "
    "Efficacy: 1 - accuracy on the forget set (multiple choice); generality: the same on unseen test images of "
    "the concept; specificity: test utility relative to the parent's; KS: how far the forget set's per-example "
    "losses sit from the retrained model's (0: the same distribution); ppl: perplexity of the parent's answers on "
    "retained data; cost: wall time as a multiple of retrain's. Yardstick: a concept the base model already "
    "knows survives retraining, so its efficacy is absolute; forgetting examples is judged against retrain."
)
HEAD = [
    "parent",
    "ε",
    "forget",
    "method",
    "seeds",
    "efficacy ↑",
    "generality ↑",
    "specificity ↑",
    "neighbours ↑",
    "KS to retrain ↓",
    "ppl ↓",
    "cost × retrain ↓",
    "U-LiRA AUC ↓",
    "U-LiRA ε̂ ↓",
    "PrivLeak",
    "DP group bound",
]


def is_unlearning(result: dict[str, Any]) -> bool:
    return result.get("kind") == KIND


@dataclass(frozen=True)
class UnlearnRow:
    task: str
    parent: str
    epsilon: float | None
    forget: str
    method: str  # its label: the name, with the recipe where it has one (`method_label`)
    method_name: str  # the unlearning method's registered name
    # efficacy, generality, specificity, neighbours, KS, ppl, cost, U-LiRA AUC, U-LiRA ε̂, PrivLeak
    cells: tuple[Stat | None, ...]
    seeds: int
    flagged: int  # audited seeds whose forget set is still detectable (U-LiRA ε̂ > 0)
    audited: int
    group_bound: str  # the DP parent's group-privacy bound for the forgotten examples, "" if none

    def texts(self) -> list[str]:
        f2, f3 = fmt_stat(2), fmt_stat(3)
        cells = [f3(s) for s in self.cells[:6]] + [f2(self.cells[6]), f3(self.cells[7]), f2(self.cells[8])]
        if self.audited and self.cells[8] is not None:
            cells[-1] += f" (**flagged {self.flagged}/{self.audited}**)" if self.flagged else " (not flagged)"
        cells += [f3(self.cells[9]), self.group_bound or "—"]
        eps = fmt_target(None) if self.epsilon is None else f"{self.epsilon:.2f}"  # the parent's accounted ε
        return [self.parent, eps, self.forget, self.method, str(self.seeds), *cells]


ORDER = ("retrain", "noop")  # the reference and the control first, then the methods by name


def rows(results: Iterable[dict[str, Any]]) -> list[UnlearnRow]:
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        p, s = r["parent"], r["spec"]
        # seeds of one configuration pool; another recipe, option or dataset is a row of its own
        parent = f"{p['method']} ({p['n_train']} examples)"  # the parent's recipe: a smaller set memorises more
        key = (p["task"], parent, p["epsilon"] if p["private"] else None, s["forget"], method_label(s))
        groups[key, s["method"], json.dumps(s["options"], sort_keys=True), p["dataset_source"]].append(r)

    def order(group: tuple) -> tuple:
        (task, parent, eps, forget, method), name, *rest = group
        rank = ORDER.index(name) if name in ORDER else len(ORDER)
        return (task, parent, eps if eps is not None else -1.0, forget, rank, method, name, *rest)

    out = []
    for group in sorted(groups, key=order):
        key, name, rs = group[0], group[1], groups[group]

        def stat(path) -> Stat | None:
            return Stat.of(path(r["metrics"], r) for r in rs)

        out.append(
            UnlearnRow(
                *key,
                method_name=name,
                cells=(
                    stat(lambda m, r: m["efficacy"]["unlearned"]),
                    stat(lambda m, r: (m["generality"] or {}).get("unlearned")),
                    stat(lambda m, r: m["specificity"]),
                    stat(lambda m, r: m["neighbour_specificity"]),
                    stat(lambda m, r: (m["distance_to_retrain"] or {}).get("unlearned", {}).get("ks")),
                    stat(lambda m, r: m["fluency_perplexity"]["unlearned"]),
                    stat(lambda m, r: r["systems"]["wall_s"] / r["systems"]["retrain_wall_s"]),
                    stat(lambda m, r: r["audit"]["ulira"]["auc"] if r["audit"] else None),
                    stat(lambda m, r: r["audit"]["ulira"]["epsilon_lower_bound"] if r["audit"] else None),
                    stat(lambda m, r: r["audit"]["privleak"] if r["audit"] else None),
                ),
                seeds=len(rs),
                flagged=sum(bool(r["audit"] and r["audit"]["not_unlearned"]) for r in rs),
                audited=sum(r["audit"] is not None for r in rs),
                group_bound=group_bound(rs),
            )
        )
    return out


def method_label(spec: dict[str, Any]) -> str:
    """The method, with its recipe where it has one (retrain and noop have none)."""
    if spec["lr"] is None:
        return spec["method"]
    return f"{spec['method']} (lr {spec['lr']:g}, {spec['steps']}×{spec['batch_size']})"


def group_bound(rs: list[dict[str, Any]]) -> str:
    """The DP parent's (kε, k·e^((k-1)ε)·δ) for the forgotten examples, as the audits state it."""
    bounds = {
        (g["k"], g["epsilon"], g["delta"], g["vacuous"])
        for r in rs
        if r["audit"] and (g := r["audit"]["group_privacy"]) is not None
    }
    if not bounds:
        return ""
    k, eps, delta, vacuous = max(bounds)
    return f"k={k}: vacuous (δ term ≥ 1)" if vacuous else f"k={k}: ({eps:.3g}, {delta:.2g})"


def plot_data(task_rows: list[UnlearnRow], task: str) -> dict[str, Any]:
    """Efficacy against specificity, a point per row that has both (none: `plots.draw` refuses it)."""
    points = [
        {
            "label": f"{r.method} ({r.parent}{'' if r.epsilon is None else f' ε{r.epsilon:g}'}, {r.forget})",
            "method": r.method_name,
            "x": r.cells[2].mean,
            "y": r.cells[0].mean,
        }
        for r in task_rows
        if r.cells[0] is not None and r.cells[2] is not None
    ]
    return {"kind": "unlearning", "title": f"{task}: unlearning efficacy against specificity", "points": points}


def draw(plot: dict[str, Any]) -> bytes:
    from matplotlib.figure import Figure

    from dpbench.leaderboard.plots import COLORS, mpl_text, png

    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    methods = sorted({p["method"] for p in plot["points"]})
    for i, method in enumerate(methods):
        pts = [p for p in plot["points"] if p["method"] == method]
        ax.scatter([p["x"] for p in pts], [p["y"] for p in pts], color=COLORS[i % len(COLORS)], label=mpl_text(method))
    ax.set_xlabel("specificity (test utility / parent's) →")
    ax.set_ylabel("efficacy on the forget set →")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(mpl_text(plot["title"]))
    return png(fig)
