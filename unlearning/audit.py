"""`dpbench unlearn ... --audit-pairs K`: the per-example membership audit of an unlearning
configuration (parent recipe, forget request, method, seed), written into its result's `audit`.

K shadow pairs (`dpbench.unlearning.shadows`, each a run folder, trained once and shared by every
method on the same parent, request and seed), then U-LiRA, the per-example ε estimator, PrivLeak
and a population loss attack on the same models (`dpbench.unlearning.ulira`). For a DP parent,
the group-privacy bound for the forgotten examples stands beside the measured figures: it holds
with or without any unlearning step.
"""

from __future__ import annotations

import fcntl
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from dpbench.registry import UNLEARNERS
from dpbench.run_folder import RunFolder
from dpbench.schemas import load_result, write_result
from dpbench.unlearning import shadows, ulira
from dpbench.unlearning.spec import UnlearnSpec

ASSUMES = (
    "U-LiRA and the per-example ε compare K shadow models unlearned after training on the forget set with K "
    "retrained without it, each on a random half of the parent's retained examples, under the parent's recipe: "
    "they measure the unlearning method on this recipe and forget set, not the one audited model alone. "
    "The ε̂ lower bound holds at 95 % for scores drawn as in the shadows, taken as independent; the not-unlearned "
    "flag tests one value per forgotten example (its scores averaged over the pairs); the per-example ε is a point "
    "estimate. "
    "Group privacy assumes the parent's (ε, δ) and holds for any post-processing, unlearning included."
)


def audit(spec: UnlearnSpec, parent_dir: str | Path, runs_dir: str | Path, pairs: int, log=print) -> dict[str, Any]:
    from dpbench.runner import holding
    from dpbench.unlearning.run import check, reference_spec, unlearn

    c = check(spec, parent_dir)
    unlearn(spec, parent_dir, runs_dir, log, c)  # the audited run first (and its retrain reference)
    started = time.perf_counter()
    unlearner = UNLEARNERS.get(spec.method)(**spec.options)
    seed = reference_spec(spec).seed  # the pairs follow the forget set, as the reference does
    folders = [shadows.pair_folder(runs_dir, spec.parent, spec.forget, seed, k) for k in range(pairs)]
    trained = 0
    for k, folder in enumerate(folders):
        with pair_lock(folder):  # one process trains a pair; another waits, then finds it trained
            trained += 2 * shadows.train_pair(c, k, seed, folder, log)
            shadows.unlearn_pair(c, k, seed, folder, unlearner, log)
    forget_u, nonmember_u = shadows.pair_losses(folders, spec.run_id())
    forget_r, nonmember_r = shadows.pair_losses(folders, shadows.RETRAINED)
    section = ulira.summarise(forget_u, forget_r, nonmember_u, nonmember_r, c.delta)
    privacy = c.parent["privacy"]
    section.update(
        pairs=pairs,
        n_forget=len(c.forget_set.forget),
        models_trained=trained,
        wall_s=round(time.perf_counter() - started, 3),
        group_privacy=ulira.group_privacy(privacy["epsilon"], privacy["delta"], len(c.forget_set.forget))
        if privacy.get("private")
        else None,
        assumes=ASSUMES,
    )
    folder = RunFolder.of(runs_dir, spec.run_id())
    with holding(folder, spec, False):
        result = load_result(folder.result, kind="unlearn")
        result["audit"] = section
        write_result(folder.result, result)
    return result


@contextmanager
def pair_lock(folder: RunFolder) -> Iterator[None]:
    folder.create()
    with open(folder.lock, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # blocking: the pair is shared, not contended
        yield
