"""Offline LiRA and RMIA: hand-computed cases, and separation properties on synthetic
statistics (members shifted vs not), through the registered attack classes."""

from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from dpbench.attacks.audit import summarise
from dpbench.attacks.base import ATTACKS
from dpbench.attacks.lira import confidence_logit, lira_offline
from dpbench.attacks.population import reference_steps, skipped_notes, split_population
from dpbench.attacks.rmia import estimate_offline_a, marginal_probability, rmia_offline
from dpbench.errors import DpbenchError
from dpbench.spec import RunSpec
from dpbench.tasks.base import Example


class FakeSignals:
    """What lira / rmia read: the target's losses and the references' (K, n), (m,), (K, m)."""

    def __init__(self, target, refs, target_z, refs_z, offline_a):
        self._target, self._refs = target, refs
        self._target_z, self._refs_z = target_z, refs_z
        self.references = SimpleNamespace(offline_a=offline_a)

    def loss(self, role="target", blank_image=False):
        assert role == "target" and not blank_image
        return self._target

    def reference_losses(self):
        return self._refs, self._target_z, self._refs_z


def synthetic(shrink: float, n: int = 300, k: int = 4, m: int = 200, seed: int = 0):
    """Per-example difficulty varies a lot (so a raw loss threshold is weak); training shrinks
    a member's loss by the factor 1 − `shrink`. RMIA's a is estimated as the run would: on
    IN and OUT data of the reference models. Returns signals and the membership labels."""
    rng = np.random.default_rng(seed)
    noise = 0.05

    def losses(typical, trained):
        return np.abs(typical * (1 - shrink * trained) + rng.normal(0, noise, np.shape(typical)))

    base = rng.uniform(0.3, 3.0, 2 * n)  # each example's typical OUT loss
    member = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    pool = rng.uniform(0.3, 3.0, (k, 100))
    pool_in = np.tile(np.arange(100) < 50, (k, 1))
    a = estimate_offline_a(np.exp(-losses(pool, pool_in)), pool_in)
    base_z = rng.uniform(0.3, 3.0, m)
    signals = FakeSignals(
        losses(base, member),
        losses(np.tile(base, (k, 1)), False),
        losses(base_z, False),
        losses(np.tile(base_z, (k, 1)), False),
        a,
    )
    return signals, member


@pytest.mark.parametrize("name", ["lira", "rmia"])
def test_shifted_members_are_found(name):
    signals, member = synthetic(shrink=0.3)
    scores = ATTACKS.get(name)().score(signals)
    assert roc_auc_score(member, scores) > 0.97
    # the raw loss attack is much weaker: calibration per example is what the references buy
    assert roc_auc_score(member, -signals.loss()) < 0.8


@pytest.mark.parametrize("name", ["lira", "rmia"])
def test_identical_distributions_give_chance(name):
    signals, member = synthetic(shrink=0.0, n=500)
    auc = roc_auc_score(member, ATTACKS.get(name)().score(signals))
    assert abs(auc - 0.5) < 0.075  # AUC's sd here is ≈ 0.018: > 4 sd of slack


def test_rmia_matches_a_hand_computed_case():
    target_x = [0.9, 0.5, 0.2]
    refs_x = [[0.5, 0.5, 0.4], [0.7, 0.5, 0.2]]  # mean OUT: 0.6, 0.5, 0.3
    target_z = [0.6, 0.3]
    refs_z = [[0.6, 0.2], [0.4, 0.4]]  # mean OUT: 0.5, 0.3
    # a = 0.3: Pr(x) = (1.3·mean + 0.7)/2 = 0.74, 0.675, 0.545; Pr(z) = 0.675, 0.545
    np.testing.assert_allclose(marginal_probability(refs_x), [0.74, 0.675, 0.545])
    # ratios: x = 1.2162, 0.7407, 0.3670; z = 0.8889, 0.5505
    np.testing.assert_allclose(rmia_offline(target_x, refs_x, target_z, refs_z), [1.0, 0.5, 0.0])
    # γ = 1.5: LR(x0, ·) = 1.368, 2.209 -> only one z beaten
    np.testing.assert_allclose(rmia_offline(target_x, refs_x, target_z, refs_z, gamma=1.5), [0.5, 0.0, 0.0])
    # a = 1: Pr(x) is the plain mean over references
    np.testing.assert_allclose(marginal_probability(refs_x, a=1.0), [0.6, 0.5, 0.3])


def test_lira_matches_a_hand_computed_case():
    target = [2.0, 1.0, 0.0]
    refs = [[0.0, 1.0, 0.0], [2.0, 1.0, 0.0]]  # means 1, 1, 0; variances 2, 0, 0 -> pooled σ² = 2/3
    z = np.array([1.0, 0.0, 0.0]) / np.sqrt(2 / 3)
    np.testing.assert_allclose(lira_offline(target, refs), z)
    # the score ranks as the one-sided p-value P[Z > target] does (smaller p = more member-like)
    p_values = stats.norm.sf(z)
    assert (np.argsort(lira_offline(target, refs), kind="stable") == np.argsort(-p_values, kind="stable")).all()
    # one reference: σ is the spread over examples
    np.testing.assert_allclose(
        lira_offline(target, [[0.0, 1.0, 2.0]]), (np.array(target) - [0, 1, 2]) / np.std([0, 1, 2])
    )
    # many references: per-example σ
    rng = np.random.default_rng(0)
    many = rng.normal([0.0, 5.0], [1.0, 3.0], size=(64, 2))
    np.testing.assert_allclose(lira_offline([1.0, 1.0], many), (1.0 - many.mean(0)) / many.std(0, ddof=1))


def test_lira_keeps_ranks_far_in_the_tails():
    """Targets far from every reference (e.g. references trained much longer) must not tie."""
    refs = np.array([[10.0, 10.0, 10.0], [10.2, 10.2, 10.2]])
    scores = lira_offline([-5.0, -4.0, -3.0], refs)
    assert scores[0] < scores[1] < scores[2]


def test_confidence_logit_is_stable_near_zero_loss():
    np.testing.assert_allclose(confidence_logit([np.log(2.0)]), [0.0], atol=1e-12)
    p = np.exp(-0.7)
    np.testing.assert_allclose(confidence_logit([0.7]), [np.log(p / (1 - p))])
    tiny = confidence_logit([1e-9, 0.0])
    assert np.isfinite(tiny).all() and tiny[0] > 20


def test_without_references_the_attacks_are_skipped_with_a_note():
    (note,) = skipped_notes(["loss", "lira", "rmia"], 0)
    assert "lira, rmia" in note and "audit.references = 0" in note
    assert skipped_notes(["loss", "lira"], 2) == [] and skipped_notes(["loss"], 0) == []
    section = summarise({}, 1e-5, n_members=10, notes=[note])
    assert section.attacks == {} and section.n_members == 10 and section.notes == [note]


def test_population_split_is_group_disjoint_and_reproducible():
    test = [Example(uid=str(i), prompt="p", target="A", group=f"img{i // 3}") for i in range(60)]
    pool, z = split_population(test, seed=0)
    assert len(pool) + len(z) == 60 and pool and z
    assert not {e.group for e in pool} & {e.group for e in z}  # an image's problems stay together
    assert split_population(test, seed=0) == (pool, z)
    assert split_population(test, seed=1) != (pool, z)


def test_reference_steps_match_the_targets_epochs_unless_set():
    spec = RunSpec().replace(**{"training.batch_size": 64})
    assert reference_steps(spec, target_epochs=2.0, n_data=320) == 10  # 2 epochs of 320 at 64 a step
    assert reference_steps(spec, target_epochs=0.01, n_data=320) == 1
    assert reference_steps(spec.replace(**{"audit.reference_steps": 7}), target_epochs=2.0, n_data=320) == 7


@pytest.mark.parametrize("change", [{"audit.references": -1}, {"audit.reference_steps": 0}, {"audit.canaries": 1}])
def test_bad_audit_options_are_rejected(change):
    with pytest.raises(DpbenchError, match="audit"):
        RunSpec().replace(**change)


def test_offline_a_is_recovered_from_in_and_out_data():
    rng = np.random.default_rng(0)
    p_out = rng.uniform(0.05, 0.9, (2, 400))
    included = rng.random((2, 400)) < 0.5
    p = np.where(included, 0.6 * p_out + 0.4, p_out)  # Pr_IN = a·Pr_OUT + (1 − a) with a = 0.6
    assert estimate_offline_a(p, included) == pytest.approx(0.6, abs=0.05)
    assert estimate_offline_a(p_out, included) == pytest.approx(1.0, abs=0.1)  # no memorisation: a ≈ 1
    with pytest.raises(ValueError):
        estimate_offline_a(p, np.ones_like(included))


@pytest.mark.parametrize("target", ["dpsgd", "dualpriv", "dpzo", "nonprivate"])
def test_reference_models_have_one_recipe_whatever_the_target(target):
    """LiRA's and RMIA's references: non-private at the non-private learning rate for every target,
    so the MIA columns of different methods are read against the same reference models."""
    from dpbench.methods.nonprivate import NonPrivate
    from dpbench.phases import reference_spec
    from dpbench.spec import RunSpec

    ref = reference_spec(RunSpec(method=target), seed=7, steps=30)
    assert ref.method == "nonprivate" and ref.training.lr == NonPrivate.default_lr
    assert ref.audit.gradient_canaries == 0 and ref.training.seed == 7 and ref.training.steps == 30
