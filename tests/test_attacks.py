"""Membership-inference attacks on a real (tiny, random) LLaVA: each registered attack gives a
finite score per example; memorised members are found; an untouched model leaks nothing."""

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

from dpbench.attacks.audit import load_scores, score_attacks, summarise
from dpbench.attacks.base import ATTACKS
from dpbench.attacks.population import losses_from_models
from dpbench.run_folder import RunFolder


def memorise(model, examples, steps=80):
    model.set_trainable(["projector", "language_model"])
    opt = torch.optim.Adam([p for p in model.model.parameters() if p.requires_grad], lr=3e-3)
    model.model.train()
    for _ in range(steps):
        loss = model.per_example_loss(model.encode(examples, [e.target for e in examples])).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.model.eval()
    return model


def arbitrary_answer(i: int) -> int:
    """Members (0-5) answer A or B, non-members (6-11) D or E: the answer has nothing to do with
    the image, so only memorisation fits the members, and a model that generalises from them
    (similar prompts, shared letters) cannot make non-members look like members by accident, as
    it did on one CPU with letters shared across the two sets."""
    return (0 if i < 6 else 3) + i % 2


@pytest.fixture(scope="module")
def examples(digit_examples):
    return [
        replace(
            e,
            prompt=f"Item {i} of the list: which digit is shown?",
            target="ABCDE"[arbitrary_answer(i)],
            choices=tuple("ABCDE"),
            answer=arbitrary_answer(i),
        )
        for i, e in enumerate(digit_examples)
    ]


@pytest.fixture(scope="module")
def models(tiny_model, examples):
    base = tiny_model
    target = copy.deepcopy(tiny_model)
    memorise(target, examples[:6])
    return target, base


@pytest.mark.parametrize("name", ATTACKS.names())
def test_every_attack_scores_every_example(name, models, examples, digit_examples, tmp_path):
    target, base = models
    # stand-in reference models (the base model twice): only the shapes matter here
    refs = losses_from_models([base, base], examples[:12], digit_examples[:4])
    scores = score_attacks([name], target, base, examples[:6], examples[6:12], RunFolder(tmp_path), references=refs)
    members, nonmembers = scores[name]
    assert members.shape == nonmembers.shape == (6,)
    assert np.isfinite(members).all() and np.isfinite(nonmembers).all()


def test_attacks_needing_references_are_skipped_without_them(models, examples, tmp_path):
    target, base = models
    scores = score_attacks(["loss", "lira", "rmia"], target, base, examples[:6], examples[6:12], RunFolder(tmp_path))
    assert set(scores) == {"loss"}


def test_memorised_members_are_separated_by_the_loss_attack(models, examples, tmp_path):
    target, base = models
    scores = score_attacks(["loss", "reference"], target, base, examples[:6], examples[6:12], RunFolder(tmp_path))
    audit = summarise(scores, delta=1e-3)
    assert audit.attacks["loss"]["auc"] >= 0.85
    assert audit.attacks["reference"]["auc"] >= 0.85
    # the saved scores reload to the same numbers (what `dpbench audit` summarises again)
    again = load_scores(RunFolder(tmp_path))
    np.testing.assert_array_equal(again["loss"][0], scores["loss"][0])


def test_reference_and_image_attacks_see_nothing_when_target_is_the_base(tiny_model, digit_examples, tmp_path):
    """mink too: the target's loss then comes from its token-statistics pass, the base's from the
    loss pass; the two must agree on the same model."""
    scores = score_attacks(
        ["reference", "image", "mink"],
        tiny_model,
        tiny_model,
        digit_examples[:6],
        digit_examples[6:12],
        RunFolder(tmp_path),
    )
    for name in ("reference", "image"):
        members, nonmembers = scores[name]
        assert np.allclose(members, 0, atol=1e-5) and np.allclose(nonmembers, 0, atol=1e-5)


def test_the_targets_loss_comes_from_its_token_statistics_pass_when_an_attack_reads_them(
    models, examples, tmp_path, monkeypatch
):
    """One forward of the target gives both signals (the same values as the loss pass, to float
    rounding), and the loss pass is not run; without a token-level attack the loss pass runs alone."""
    from dpbench.attacks import signals as signals_module
    from dpbench.attacks.signals import Signals, per_example_losses

    target, base = models
    expected = per_example_losses(target, examples[:12])
    calls = []
    real = signals_module.per_example_losses
    monkeypatch.setattr(signals_module, "per_example_losses", lambda m, *a, **k: calls.append(m) or real(m, *a, **k))
    shared = Signals(target, base, examples[:12], work_dir=tmp_path, token_stats_for_loss=True)
    np.testing.assert_allclose(shared.loss("target"), expected, rtol=1e-5, atol=1e-5)
    assert len(shared.token_stats("target")) == 12 and calls == []
    alone = Signals(target, base, examples[:12], work_dir=tmp_path)
    np.testing.assert_array_equal(alone.loss("target"), expected)
    assert calls == [target]
