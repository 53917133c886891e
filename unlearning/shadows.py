"""Shadow pairs for the unlearning audit (`dpbench.unlearning.ulira`), a run folder each:
`runs/shadow-<hash>/` for (parent, forget request, pair k) and the seed that selected the forget
set (the retrain reference's: a concept's forget set is the same at every unlearning seed).

Pair k draws D_k, a random half of the parent's retained examples, then trains the parent's
recipe (its method, privacy, steps; seed + 1 + k) from the base model twice: on D_k ∪ F (kept as
`checkpoint/`, what every unlearning method starts from) and on D_k alone (the retrained model).
Each method then unlearns F from the first, on D_k as its retain set. The folder keeps the
per-example losses of F and of as many non-members under every model (`losses-<model>.npz`),
so adding a method costs one unlearning per pair, not two trainings.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
from pathlib import Path

import numpy as np

from dpbench.files import write_json_atomic, write_npz
from dpbench.run_folder import RunFolder
from dpbench.unlearning.requests import ForgetSet

TRAINED, RETRAINED = "trained", "retrained"
POPULATION = 200  # non-members scored under every model (`nonmembers`)


def pair_folder(runs_dir: str | Path, parent: str, forget: str, seed: int, k: int) -> RunFolder:
    key = json.dumps(
        {"parent": parent, "forget": forget, "seed": seed, "pair": k, "population": POPULATION}, sort_keys=True
    )
    return RunFolder.of(runs_dir, f"shadow-{hashlib.sha256(key.encode()).hexdigest()[:12]}")


def losses_file(folder: RunFolder, model: str) -> Path:
    return folder.path / f"losses-{model}.npz"


def split(c, k: int, seed: int) -> list:
    pool = c.forget_set.retain
    return random.Random(f"shadow-{seed}-{k}").sample(pool, len(pool) // 2)


def nonmembers(c) -> list:
    """The population attack's non-members: a seeded sample of the task's held-out examples, at
    least POPULATION of them (a handful reads a retrained model's AUC far from 0.5 by chance)."""
    n = min(len(c.nonmembers), max(POPULATION, len(c.forget_set.forget)))
    return random.Random("shadow-nonmembers").sample(c.nonmembers, n)


def save_losses(folder: RunFolder, model_name: str, model, c) -> None:
    from dpbench.unlearning.metrics import example_losses

    write_npz(
        losses_file(folder, model_name),
        forget=example_losses(model, c.forget_set.forget),
        nonmembers=example_losses(model, nonmembers(c)),
    )


def train_pair(c, k: int, seed: int, folder: RunFolder, log=print) -> bool:
    """The pair's two trainings, once: the trained model's checkpoint and both models' losses.
    True when it trained them now."""
    from dpbench import phases

    if losses_file(folder, TRAINED).exists() and losses_file(folder, RETRAINED).exists():
        return False
    folder.create()
    spec = c.parent_spec.replace(**{"audit.gradient_canaries": 0, "training.seed": c.parent_spec.training.seed + 1 + k})
    half = split(c, k, seed)
    for name, data in ((TRAINED, half + c.forget_set.forget), (RETRAINED, half)):
        log(f"shadow pair {k}: training the parent's recipe on {len(data)} examples ({name})")
        model, _ = phases.train_from_base(spec, data, c.delta)
        if name == TRAINED:
            model.model.save_pretrained(folder.checkpoint)
            model.processor.save_pretrained(folder.checkpoint)
        save_losses(folder, name, model, c)
    write_json_atomic(
        folder.path / "pair.json",
        {"parent": c.parent["run_id"], "forget": c.spec.forget, "seed": seed, "pair": k, "n_half": len(half)},
    )
    return True


def unlearn_pair(c, k: int, seed: int, folder: RunFolder, unlearner, log=print) -> None:
    """`unlearner` applied to the pair's trained model (forget F, retain D_k), its losses saved."""
    from dpbench import phases
    from dpbench.unlearning.base import Context
    from dpbench.unlearning.run import model_info

    out = losses_file(folder, c.spec.run_id())
    if out.exists():
        return
    if unlearner.name == "retrain":  # retraining the pair's trained model gives its retrained model
        write_npz(out, **np.load(losses_file(folder, RETRAINED)))
        return
    log(f"shadow pair {k}: {unlearner.name}")
    ps = c.parent_spec
    model = phases.load_checkpoint(ps, phases.make_method(ps), folder, model_info(c.parent))
    model.set_trainable(ps.training.trainable.split(","))
    half = split(c, k, seed)
    fs = ForgetSet(c.forget_set.request, c.forget_set.forget, half, [], [], c.forget_set.concept_names)
    original = copy.deepcopy(model) if unlearner.needs_original else None
    ctx = Context(model, original, fs, c.spec, ps, half + c.forget_set.forget, c.delta)
    save_losses(folder, c.spec.run_id(), unlearner.unlearn(ctx), c)


def pair_losses(folders: list[RunFolder], model: str) -> tuple[np.ndarray, np.ndarray]:
    """(K, n) losses of the forget set and of the non-members under `model` across the pairs."""
    loaded = [np.load(losses_file(f, model)) for f in folders]
    return np.stack([d["forget"] for d in loaded]), np.stack([d["nonmembers"] for d in loaded])
