"""A sweep file's `unlearn:` section: methods × forget requests × seeds on every parent the grid
trains (its tasks × methods × epsilons × seeds), after them, on the same engine::

    methods: [nonprivate, dpsgd]          # the parents, trained with --save-checkpoint
    epsilons: [8]
    ...
    unlearn:
      methods: [retrain, noop, ga, siu]
      requests: ["concept:3", "examples:1%"]
      seeds: [0, 1, 2]
      recipe: {steps: 30, batch_size: 8}  # optional: the gradient methods' recipe
      audit_pairs: 8                        # optional: each cell audited over 8 shadow pairs

The `retrain` reference of each (parent, request, seed) runs first, so the methods measured
against it, run in parallel by Ray or Slurm, never race to train it; with `audit_pairs`, so does
the first audit (of `retrain`), which trains the shadow pairs the other methods share.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dpbench.errors import DpbenchError
from dpbench.run_folder import RunFolder
from dpbench.spec import RunSpec
from dpbench.unlearning.requests import ForgetRequest
from dpbench.unlearning.spec import UnlearnSpec

KEYS = ("methods", "requests", "seeds")
RECIPE_KEYS = ("steps", "batch_size", "lr")
OPTIONAL = ("recipe", "audit_pairs")


def check_section(section: Any) -> dict[str, Any]:
    """The section's shape, checked before any run starts; the method names and requests too."""
    from dpbench.registry import UNLEARNERS

    if not isinstance(section, dict) or set(section) - {*KEYS, *OPTIONAL} or not set(KEYS) <= set(section):
        raise DpbenchError(
            f"sweep `unlearn` must be a mapping of {', '.join(KEYS)} (and optional {', '.join(OPTIONAL)})"
        )
    pairs = section.get("audit_pairs")
    if pairs is not None and (isinstance(pairs, bool) or not isinstance(pairs, int) or pairs < 3):
        raise DpbenchError(f"sweep unlearn.audit_pairs must be an integer of at least 3, got {pairs!r}")
    for key in KEYS:
        if not isinstance(section[key], list) or not section[key]:
            raise DpbenchError(f"sweep unlearn.{key} must be a non-empty list, got {section[key]!r}")
    for name in section["methods"]:
        UNLEARNERS.get(str(name))
    for request in section["requests"]:
        ForgetRequest.parse(request)
    if not all(isinstance(x, str) for x in section["methods"] + section["requests"]):
        raise DpbenchError("sweep unlearn.methods and unlearn.requests must be lists of names and requests")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in section["seeds"]):
        raise DpbenchError(f"sweep unlearn.seeds must be non-negative integers, got {section['seeds']!r}")
    recipe = section.get("recipe") or {}
    if not isinstance(recipe, dict) or set(recipe) - set(RECIPE_KEYS):
        raise DpbenchError(f"sweep unlearn.recipe takes {', '.join(RECIPE_KEYS)}, got {recipe!r}")
    if isinstance(recipe.get("lr"), (str, int)) and not isinstance(recipe.get("lr"), bool):
        try:  # YAML reads 1e-4 as text; as a float it hashes as `--lr 1e-4` does
            recipe = {**recipe, "lr": float(recipe["lr"])}
        except ValueError:
            pass  # the spec below says what is wrong
    UnlearnSpec("parent", "method", "examples:1", **recipe)  # every value, before any parent trains
    return {**section, "recipe": recipe}


def jobs(section: dict[str, Any], parents: list[RunSpec], runs_dir: str | Path) -> tuple[list, list]:
    """(retrain jobs, the other jobs): (job id, `dpbench unlearn` arguments) of every cell not done."""
    from dpbench.unlearning.run import REFERENCE, make_spec

    recipe = section.get("recipe") or {}
    pairs = section.get("audit_pairs")
    first, rest, seen = [], [], set()
    for parent in parents:
        folder = RunFolder.of(runs_dir, parent.run_id()).path
        for request in section["requests"]:
            for seed in section["seeds"]:
                for method in [REFERENCE] + [m for m in section["methods"] if m != REFERENCE]:
                    spec = make_spec(folder, method, request, seed=seed, **recipe)
                    run = RunFolder.of(runs_dir, spec.run_id())
                    if spec.run_id() in seen or (run.finished(spec) and (pairs is None or audited(run, pairs))):
                        continue  # seen: a concept's one retrain serves every seed
                    seen.add(spec.run_id())
                    args = ["unlearn", str(folder), "--method", method, "--forget", request, "--seed", str(seed)]
                    args += [f"--{k.replace('_', '-')}={v}" for k, v in recipe.items()]
                    args += [f"--audit-pairs={pairs}"] if pairs is not None else []
                    (first if method == REFERENCE else rest).append(
                        (spec.run_id(), args + ["--runs-dir", str(runs_dir)])
                    )
    return first, rest


def audited(run: RunFolder, pairs: int) -> bool:
    """The run's result carries an audit over `pairs` shadow pairs."""
    from dpbench.schemas import load_result

    audit = load_result(run.result).get("audit")
    return audit is not None and audit["pairs"] == pairs
