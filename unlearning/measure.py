"""The unlearning result's `metrics` section: the unlearned model beside the parent and the
retrained model, on the sets the forget request defines (`dpbench.unlearning.metrics`).

The parent's and the retrained model's utility figures do not depend on the method, so the
`retrain` run measures them once and the other methods on the same (parent, request, seed) take
them from its result; the forget set's losses, which the distance to retrain compares, are scored
afresh for all three models in every run.
"""

from __future__ import annotations

from typing import Any

from dpbench.unlearning import metrics as m

# the per-model figures a method's run takes from its retrain reference (for the parent and the retrain)
SHARED = (
    "efficacy",
    "generality",
    "forget_metric",
    "test_metric",
    "neighbour_metric",
    "fluency_perplexity",
    "diversity",
)


def utility_figures(c, model, answers_of=None) -> dict[str, Any]:
    """One model's figures on the request's sets; `answers_of`: the parent, whose answers the
    fluency reads (the model itself when it is the parent)."""
    fs, task = c.forget_set, c.task
    fluency_set = m.fluency_sample(fs.retain, 0)
    answers = m.parent_answers(answers_of or model, fluency_set)
    forget_metric = m.primary(task, model, fs.forget)
    return {
        "efficacy": m.efficacy(task, model, fs.forget, fs.concept_names, scored=forget_metric),
        "generality": m.efficacy(task, model, fs.generality, fs.concept_names) if fs.generality else None,
        "forget_metric": forget_metric,
        "test_metric": m.primary(task, model, c.scored),
        "neighbour_metric": m.primary(task, model, fs.neighbours) if fs.neighbours else None,
        "fluency_perplexity": m.perplexity(model, fluency_set, answers),
        "diversity": m.diversity(m.generations(model, fs.forget)),
    }


def measure(c, unlearned, parent, retrained=None, reference: dict[str, Any] | None = None) -> dict[str, Any]:
    """`retrained` and `reference` (the retrain run's result) are None for the `retrain` run itself."""
    own = utility_figures(c, unlearned, answers_of=parent)
    if reference is None:
        others = {"parent": utility_figures(c, parent)}
    else:
        shared = reference["metrics"]
        others = {
            "parent": {k: (shared[k] or {}).get("parent") for k in SHARED},
            "retrain": {k: (shared[k] or {}).get("unlearned") for k in SHARED},
        }
    figures = {"unlearned": own, **others}

    def per_model(key: str) -> dict[str, Any] | None:
        if own[key] is None and key in ("generality", "neighbour_metric"):
            return None  # the request defines no such set
        return {name: f[key] for name, f in figures.items()}

    fs = c.forget_set
    losses = {"parent": m.example_losses(parent, fs.forget), "unlearned": m.example_losses(unlearned, fs.forget)}
    if retrained is not None:
        losses["retrain"] = m.example_losses(retrained, fs.forget)
    test, neighbours = per_model("test_metric"), per_model("neighbour_metric")
    out: dict[str, Any] = {
        "primary_metric": c.task.primary_metric,
        **{key: per_model(key) for key in SHARED},
        "specificity": m.relative(test["unlearned"], test["parent"]),
        "neighbour_specificity": m.relative(neighbours["unlearned"], neighbours["parent"]) if neighbours else None,
        "forget_loss_mean": {k: float(v.mean()) for k, v in losses.items()},
        "distance_to_retrain": None,
    }
    if retrained is not None:
        out["distance_to_retrain"] = {
            "unlearned": m.ks_distance(losses["unlearned"], losses["retrain"]),
            "parent": m.ks_distance(losses["parent"], losses["retrain"]),
        }
    return out
