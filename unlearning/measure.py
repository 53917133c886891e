"""The unlearning result's `metrics` section: the unlearned model beside the parent and the
retrained model, on the sets the forget request defines (`dpbench.unlearning.metrics`)."""

from __future__ import annotations

from typing import Any

from dpbench.unlearning import metrics as m


def measure(c, unlearned, parent, retrained) -> dict[str, Any]:
    """`c`: the run's `Checked` inputs; `retrained` is None for the `retrain` run itself (it is the reference)."""
    fs, task, seed = c.forget_set, c.task, c.spec.seed
    names = fs.concept_names
    models = {"parent": parent, "unlearned": unlearned, "retrain": retrained}
    models = {k: v for k, v in models.items() if v is not None}

    def per_model(fn) -> dict[str, Any]:
        return {k: fn(model) for k, model in models.items()}

    fluency_set = m.fluency_sample(fs.retain, seed)
    answers = m.parent_answers(parent, fluency_set)
    forget_generations = {k: m.generations(model, fs.forget) for k, model in models.items()}
    losses = {k: m.example_losses(model, fs.forget) for k, model in models.items()}
    test = per_model(lambda model: m.primary(task, model, c.scored))
    neighbours = per_model(lambda model: m.primary(task, model, fs.neighbours)) if fs.neighbours else None
    out: dict[str, Any] = {
        "primary_metric": task.primary_metric,
        "efficacy": per_model(lambda model: m.efficacy(task, model, fs.forget, names)),
        "generality": per_model(lambda model: m.efficacy(task, model, fs.generality, names)) if fs.generality else None,
        "forget_metric": per_model(lambda model: m.primary(task, model, fs.forget)),
        "test_metric": test,
        "specificity": m.relative(test["unlearned"], test["parent"]),
        "neighbour_metric": neighbours,
        "neighbour_specificity": m.relative(neighbours["unlearned"], neighbours["parent"]) if neighbours else None,
        "fluency_perplexity": per_model(lambda model: m.perplexity(model, fluency_set, answers)),
        "diversity": {k: m.diversity(g) for k, g in forget_generations.items()},
        "forget_loss_mean": {k: float(v.mean()) for k, v in losses.items()},
        "distance_to_retrain": None,
    }
    if retrained is not None:
        out["distance_to_retrain"] = {
            "unlearned": m.ks_distance(losses["unlearned"], losses["retrain"]),
            "parent": m.ks_distance(losses["parent"], losses["retrain"]),
        }
    return out
