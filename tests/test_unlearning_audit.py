"""The unlearning audit's statistics against simulations with known answers, and its run end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dpbench.attacks.lira import confidence_logit
from dpbench.run_folder import RunFolder
from dpbench.schemas import load_result
from dpbench.unlearning import ulira


def simulate(k=16, n=40, shift=0.0, spread=3.0, noise=0.3, seed=0):
    """(K, n) losses: each example has its own level (`spread` across examples, what a population
    attack must see past); "unlearned" models sit `shift` lower on every forgotten example."""
    rng = np.random.default_rng(seed)
    level = rng.uniform(0.5, 0.5 + spread, n)
    retrained = level + noise * rng.standard_normal((k, n))
    unlearned = level - shift + noise * rng.standard_normal((k, n))
    return np.clip(unlearned, 1e-3, None), np.clip(retrained, 1e-3, None)


def test_the_score_is_the_logit_of_the_probability():
    p = np.array([0.1, 0.5, 0.9])
    assert np.allclose(confidence_logit(-np.log(p)), np.log(p / (1 - p)))


def test_indistinguishable_models_are_not_flagged():
    u, r = simulate(shift=0.0)
    nu, nr = simulate(shift=0.0, seed=1)
    s = ulira.summarise(u, r, nu, nr, delta=1e-5)
    assert abs(s["ulira"]["auc"] - 0.5) < 0.08 and s["ulira"]["epsilon_lower_bound"] == 0.0
    assert not s["not_unlearned"]


def test_a_per_example_shift_is_caught_where_the_population_attack_is_not():
    """Hayes et al.'s point: each forgotten example still sits lower than its retrained self, but
    the examples' own spread hides that from a threshold over all of them."""
    u, r = simulate(shift=0.6, spread=6.0)
    rng = np.random.default_rng(7)
    nonmembers = np.clip(rng.uniform(0.5, 6.5, (16, 40)), 1e-3, None)  # the same spread, never trained
    s = ulira.summarise(u, r, nonmembers, nonmembers, delta=1e-5)
    assert s["ulira"]["auc"] > 0.8 and s["ulira"]["epsilon_lower_bound"] > 0.3 and s["not_unlearned"]
    assert abs(s["population_loss"]["unlearned"]["auc"] - 0.5) < 0.15  # forget set vs non-members: little signal


def test_few_pairs_flag_a_clear_shift_by_its_auc_before_any_epsilon_bound():
    """4 pairs and 10 forgotten examples (the committed audit's size): 40 scores a side are too few
    for the ε̂ bound to leave 0, but enough for the AUC's test to tell the models apart."""
    u, r = simulate(k=4, n=10, shift=0.5, spread=3.0)
    s = ulira.summarise(u, r, u, r, delta=1e-5)
    assert s["ulira"]["auc"] > 0.75 and s["ulira"]["p_value"] < 0.05 and s["not_unlearned"]
    assert s["ulira"]["epsilon_lower_bound"] == 0.0


def test_the_not_unlearned_flag_errs_at_about_its_level_on_indistinguishable_models():
    flags = []
    for seed in range(60):
        u, r = simulate(k=4, n=10, shift=0.0, seed=100 + seed)
        flags.append(ulira.summarise(u, r, u, r, delta=1e-5)["not_unlearned"])
    assert sum(flags) <= 8  # 5 % of 60 is 3; 8 or more has probability under 0.5 % at the nominal level


def test_identical_shadow_models_give_exactly_chance():
    u, _ = simulate()
    pos, neg = ulira.ulira_scores(confidence_logit(u), confidence_logit(u))
    assert np.array_equal(pos, neg)


def test_per_example_epsilon_of_separated_scores_is_the_floor_limited_value():
    k, delta = 10, 1e-5
    u = np.zeros((k, 1))
    r = np.ones((k, 1))
    floor = 1 / (2 * k)
    eps = ulira.per_example_epsilon(u, r, delta)  # unlearned scores lower: the rule "unlearned if >= t" fails,
    assert eps[0] == pytest.approx(0.0)  # so separation in that direction is no evidence of leakage
    eps = ulira.per_example_epsilon(r, u, delta)
    assert eps[0] == pytest.approx(math.log((1 - delta - floor) / floor))


def test_group_privacy_is_k_epsilon_and_k_e_to_the_k_minus_1_epsilon_delta():
    g = ulira.group_privacy(2.0, 1e-6, 3)
    assert g["epsilon"] == 6.0 and g["delta"] == pytest.approx(3 * math.exp(4.0) * 1e-6) and not g["vacuous"]
    assert ulira.group_privacy(8.0, 1e-5, 22)["vacuous"]


def test_the_population_attack_scores_a_seeded_sample_of_held_out_examples():
    """At least POPULATION non-members (a handful reads a retrained model's AUC far from 0.5), never the
    same few first ones of the split, the same at every call."""
    from types import SimpleNamespace

    from dpbench.unlearning import shadows

    held_out = [f"x{i}" for i in range(1000)]
    c = SimpleNamespace(nonmembers=held_out, forget_set=SimpleNamespace(forget=["f"] * 14))
    sample = shadows.nonmembers(c)
    assert len(sample) == len(set(sample)) == shadows.POPULATION and set(sample) <= set(held_out)
    assert sample != held_out[: shadows.POPULATION] and sample == shadows.nonmembers(c)
    c.forget_set.forget = ["f"] * 300  # a forget set larger than the population: as many non-members
    assert len(shadows.nonmembers(c)) == 300
    c.nonmembers = held_out[:50]  # fewer held out than asked: all of them
    assert sorted(shadows.nonmembers(c)) == sorted(held_out[:50])


def test_fewer_than_three_pairs_are_refused():
    u, r = simulate(k=2)
    with pytest.raises(ValueError, match="3 shadow pairs"):
        ulira.ulira_scores(u, r)


@pytest.mark.slow
def test_the_audit_writes_a_valid_section_and_retrain_reads_as_unlearned(finished_parent_run):
    from dpbench.unlearning.audit import audit
    from dpbench.unlearning.run import make_spec

    folder, runs = finished_parent_run
    result = audit(make_spec(folder, "retrain", "examples:4"), folder, runs, pairs=3, log=lambda *a: None)
    a = result["audit"]
    assert load_result(RunFolder.of(runs, result["run_id"]).result)["audit"] == a
    assert a["ulira"]["auc"] == 0.5 and a["ulira"]["epsilon_lower_bound"] == 0.0 and not a["not_unlearned"]
    assert a["models_trained"] == 6 and a["group_privacy"] is None
    again = audit(make_spec(folder, "ga", "examples:4", steps=2), folder, runs, pairs=3, log=lambda *a: None)
    assert again["audit"]["models_trained"] == 0  # the pairs are shared by every method
    assert again["audit"]["ulira"]["auc"] != 0.5  # its shadows were unlearned, not copied from the retrained ones
