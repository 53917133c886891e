"""Reference models for the offline attacks (lira, rmia): what they train on, and their losses.

Offline LiRA and RMIA need models that never trained on the audited examples but otherwise
look like the target. The run's phases train them (`dpbench.phases.references`: the method-free
non-private recipe, from the same base model) on the plan made here, from population data: the
task's `test` split, which the task keeps disjoint (image-disjoint too) from `train` (members)
and `nonmembers`. Half of the test split's images train the references; the other half are
RMIA's population samples z, which no model trains on. Utility is also measured on the test
split: that is harmless, because the references only serve the audit and never touch the
target model. The audit receives the references as their losses (`ReferenceLosses`), never as
models, and this module trains nothing.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import numpy as np

from dpbench.attacks.base import ATTACKS
from dpbench.attacks.rmia import estimate_offline_a
from dpbench.attacks.signals import ReferenceLosses, per_example_losses
from dpbench.checks import SEED_LIMIT
from dpbench.errors import DpbenchError
from dpbench.examples import Example
from dpbench.files import write_npz
from dpbench.run_folder import RunFolder

SEED_OFFSET = 7919  # reference k trains with seed + SEED_OFFSET + k: never the target's own seed


def needing_references(attacks) -> list[str]:
    return [a for a in attacks if ATTACKS.get(a).needs_references]


def skipped_notes(attacks, n_references: int) -> list[str]:
    """Why requested attacks were not run (recomputable from the spec, e.g. by a re-audit)."""
    skipped = needing_references(attacks)
    if skipped and n_references == 0:
        return [
            f"{', '.join(skipped)} not run: audit.references = 0 (they need reference models "
            "fine-tuned on population data)"
        ]
    return []


def _group(e: Example) -> str:
    return e.group or e.uid


def halves(examples: list[Example], seed) -> tuple[list[Example], list[Example]]:
    """A seeded random half of the image groups and the rest: problems that share an image
    stay on one side, so "OUT" never means "saw the same picture"."""
    groups = sorted({_group(e) for e in examples})
    first = set(random.Random(seed).sample(groups, len(groups) // 2))
    return [e for e in examples if _group(e) in first], [e for e in examples if _group(e) not in first]


def split_population(test: list[Example], seed: int) -> tuple[list[Example], list[Example]]:
    """The test split into (reference training pool, population samples z)."""
    return halves(test, f"population-{seed}")


def reference_steps(spec, target_epochs: float, n_data: int) -> int:
    """`audit.reference_steps`, else as many epochs over the reference's data as the target
    made over its own: how often an example was seen is what shapes IN/OUT behaviour."""
    if spec.audit.reference_steps is not None:
        return spec.audit.reference_steps
    return max(1, round(target_epochs * n_data / min(spec.training.batch_size, n_data)))


def losses_from_models(models, audited: list[Example], population: list[Example]) -> ReferenceLosses:
    """Reference losses of given models (no training, RMIA's default a): for tests and experiments."""
    return ReferenceLosses(
        uids=tuple(e.uid for e in audited),
        losses=np.stack([per_example_losses(m, audited) for m in models]),
        population=tuple(population),
        population_losses=np.stack([per_example_losses(m, population) for m in models]),
    )


@dataclass(frozen=True)
class ReferencePlan:
    """The reference models an audit needs: each one's seed and training data, their steps, and
    the examples their losses are read on."""

    seeds: tuple[int, ...]
    datasets: tuple[tuple[Example, ...], ...]  # each model's random half of `pool`
    steps: int
    pool: tuple[Example, ...]  # the half of the test split that references train on
    population: tuple[Example, ...]  # RMIA's z, the other half: no model trains on them
    audited: tuple[Example, ...]  # members then non-members


def plan_references(
    spec, attacks, test: list[Example], audited: list[Example], target_epochs: float
) -> ReferencePlan | None:
    """What the run's references train on; None when none of `attacks` needs them or
    `audit.references` is 0."""
    k = spec.audit.references
    if k == 0 or not needing_references(attacks):
        return None
    pool, population = split_population(test, spec.training.seed)
    if len({_group(e) for e in pool}) < 2 or not population:  # a reference needs IN and OUT pool examples
        raise DpbenchError(f"the test split ({len(test)} examples) is too small to train reference models")
    seeds = tuple((spec.training.seed + SEED_OFFSET + i) % SEED_LIMIT for i in range(k))  # a seed, as the target's is
    datasets = tuple(
        tuple(halves(pool, seed)[0]) for seed in seeds
    )  # each a random half: references differ as datasets do
    steps = reference_steps(spec, target_epochs, max(1, len(pool) // 2))
    return ReferencePlan(seeds, datasets, steps, tuple(pool), tuple(population), tuple(audited))


def cached_references(folder: RunFolder, plan: ReferencePlan) -> ReferenceLosses | None:
    """The run folder's reference losses, when they were read off the plan's models and examples."""
    cached = load_references(folder, list(plan.population))
    if (
        cached is not None
        and cached.uids == tuple(e.uid for e in plan.audited)
        and len(cached.losses) == len(plan.seeds)
    ):
        return cached
    return None


ModelLosses = tuple[np.ndarray, np.ndarray, np.ndarray]  # one reference's losses: audited, population, pool


def model_losses(model, plan: ReferencePlan) -> ModelLosses:
    """What the audit needs of one trained reference model: its losses on the audited examples,
    on the population samples, and on its pool (in and out of its half: they give RMIA's a)."""
    return tuple(per_example_losses(model, list(examples)) for examples in (plan.audited, plan.population, plan.pool))


def assemble(plan: ReferencePlan, losses: list[ModelLosses], recipe: dict) -> ReferenceLosses:
    """The references as the audit receives them, from each model's `model_losses`; `recipe`
    (method, lr) says how they trained, for the result."""
    k = len(plan.seeds)
    insides = [{d.uid for d in data} for data in plan.datasets]  # a set per reference model, built once
    pool_in = [[e.uid in inside for e in plan.pool] for inside in insides]
    a = estimate_offline_a(np.exp(-np.stack([pool for _, _, pool in losses])), pool_in)
    info = {
        "models": k,
        "steps": plan.steps,
        **recipe,
        "examples_per_model": round(sum(len(d) for d in plan.datasets) / k),
        "population_samples": len(plan.population),
        "rmia_offline_a": a,
        "data": "test split: half of its images train the references (each a random half of those), "
        "the other half are RMIA's population samples z",
    }
    return ReferenceLosses(
        tuple(e.uid for e in plan.audited),
        np.stack([audited for audited, _, _ in losses]),
        plan.population,
        np.stack([population for _, population, _ in losses]),
        a,
        info,
    )


def save_references(folder: RunFolder, refs: ReferenceLosses) -> None:
    write_npz(
        folder.reference_losses,
        uids=np.array(refs.uids),
        losses=refs.losses,
        population_uids=np.array([e.uid for e in refs.population]),
        population_losses=refs.population_losses,
        info=np.array(json.dumps(refs.info)),
    )  # info holds a


def load_references(folder: RunFolder, population: list[Example]) -> ReferenceLosses | None:
    """The cached losses, or None when there are none or they were for other population samples."""
    path = folder.reference_losses
    if not path.exists():
        return None
    data = np.load(path)
    if [str(u) for u in data["population_uids"]] != [e.uid for e in population]:
        return None
    info = json.loads(str(data["info"]))
    return ReferenceLosses(
        tuple(str(u) for u in data["uids"]),
        data["losses"],
        tuple(population),
        data["population_losses"],
        info.get("rmia_offline_a"),
        info,
    )
