"""The white-box gradient-canary audit: canaries enter the real Opacus step (clipped to C, noised),
the bounds match a reference implementation, a correct mechanism stays below its ε and broken
ones (a tenth of the noise; one group unclipped) are caught."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys

import numpy as np
import pytest
import torch

from dpbench.attacks import gradient_canaries
from dpbench.attacks.one_run_bounds import fdp_epsilon_lower_bound, gaussian_sigma, one_run_epsilon_lower_bound
from dpbench.methods.dpsgd import train_dp_sgd
from dpbench.methods.dpzo import DPZO
from dpbench.methods.faults import FAULTS, broken_mechanism
from dpbench.methods.nonprivate import NonPrivate
from dpbench.registry import METHODS
from dpbench.spec import AUDIT_CANARIES, RunSpec

COUNTS = [
    (1000, 100, 90, 7e-5),
    (1000, 1000, 1000, 7e-5),
    (1000, 50, 40, 7e-5),
    (100, 20, 20, 1e-5),
    (1000, 200, 130, 7e-5),
]
# jax-privacy 2.0.0's _epsilon_one_run_fdp and _epsilon_one_run on COUNTS (significance 0.05), for
# machines where it is not installed
REFERENCE_FDP = [2.16183, 11.2295, 0.88371, 3.23939, 0.4718]
REFERENCE_STEINKE = [1.5965, 5.61533, 0.73144, 1.8196, 0.35763]


def jax_privacy_auditing():
    """jax_privacy's auditing module, loaded by path (it needs dp_accounting, numpy and scipy, not jax)."""
    try:
        dist = importlib.metadata.distribution("jax-privacy")
    except importlib.metadata.PackageNotFoundError:
        return None
    path = next(f.locate() for f in dist.files if str(f).endswith("jax_privacy/auditing.py"))
    spec = importlib.util.spec_from_file_location("jax_privacy_auditing", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("i", range(len(COUNTS)))
def test_both_one_run_bounds_match_jax_privacy(i):
    m, r, v, delta = COUNTS[i]
    reference = jax_privacy_auditing()
    if reference is not None:
        fdp, steinke = (
            reference._epsilon_one_run_fdp(0.0, m, r, v, 0.05, delta),
            reference._epsilon_one_run(0.0, m, r, v, 0.05, delta),
        )
    else:
        fdp, steinke = REFERENCE_FDP[i], REFERENCE_STEINKE[i]
    assert fdp_epsilon_lower_bound(m, r, v, delta, 0.95) == pytest.approx(fdp, abs=1e-4)
    assert one_run_epsilon_lower_bound(m, r, v, delta, 0.95) == pytest.approx(steinke, abs=1e-4)


def test_the_gaussian_sigma_of_an_epsilon_delta_pair_matches_dp_accounting():
    import dp_accounting

    for eps, delta in [(1.0, 1e-5), (8.0, 7e-5), (0.1, 1e-3)]:
        assert gaussian_sigma(eps, delta) == pytest.approx(dp_accounting.get_sigma_gaussian(eps, delta), rel=1e-6)


# the bounds' δ term grows as 2·m·δ: at m = 1000 a δ much above 1e-4 caps them near zero
DELTA = 1e-5


def spec(**changes):
    base = {"training.lr": 1e-9, "training.physical_batch_size": 12, "audit.gradient_canaries": 400}
    return RunSpec().replace(**{**base, **changes})


class Recorder:
    """What the auditor saw per step: released minus known, and which canaries were drawn."""

    def __init__(self, monkeypatch):
        self.y, self.drawn = [], []
        draw, observe = gradient_canaries.GradientCanaries.draw, gradient_canaries.GradientCanaries.observe

        def recording_draw(canaries):
            active = draw(canaries)
            self.drawn.append(active)
            return active

        def recording_observe(canaries, released, thresholds=None):
            self.y.append(released - canaries.known)
            self.included = canaries.included
            observe(canaries, released, thresholds)

        monkeypatch.setattr(gradient_canaries.GradientCanaries, "draw", recording_draw)
        monkeypatch.setattr(gradient_canaries.GradientCanaries, "observe", recording_observe)


@pytest.mark.parametrize("clipping", ["per-sample", "ghost"])
def test_a_drawn_canary_enters_the_released_sum_clipped_to_c(tiny_model, digit_examples, monkeypatch, clipping):
    """Batch = n: every included canary is drawn every step. What the step releases at a drawn
    canary's coordinate, less the real examples' part, is C plus N(0, (σC)²); elsewhere noise
    alone. Unclipped canaries (norm 10 C) or canaries left out would fail this."""
    seen = Recorder(monkeypatch)
    tiny_model.set_trainable(["projector", "language_model"])
    s = spec(**{"training.steps": 4, "training.batch_size": 12, "privacy.epsilon": 50.0})
    report = train_dp_sgd(tiny_model, digit_examples, s, 1e-3, label="test", clipping=clipping)
    sigma_c = report.privacy.noise_multiplier * s.privacy.max_grad_norm
    y = np.stack(seen.y)
    drawn = np.zeros_like(y, dtype=bool)
    for t, active in enumerate(seen.drawn):
        drawn[t, active] = True
    assert (drawn.any(axis=0) == seen.included).all()  # at rate 1 the drawn ones are the included ones
    inside, outside = y[drawn], y[~drawn]
    assert abs(inside.mean() - 1.0) < 5 * sigma_c / len(inside) ** 0.5
    assert abs(outside.mean()) < 5 * sigma_c / len(outside) ** 0.5
    assert outside.std() == pytest.approx(sigma_c, rel=0.15)
    assert report.whitebox["steps_observed"] == 4 and report.whitebox["m"] == 400


def audit_of(model, examples, epsilon, fault=None, **changes):
    model.set_trainable(["projector", "language_model"])
    s = spec(**{"training.steps": 30, "training.batch_size": 4, "privacy.epsilon": epsilon, **changes})
    if fault is None:
        return train_dp_sgd(model, examples, s, DELTA, label="test").whitebox
    with broken_mechanism(fault):
        return train_dp_sgd(model, examples, s, DELTA, label="test").whitebox


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(2))
def test_a_correct_mechanism_is_never_flagged(tiny_model, digit_examples, seed):
    """Two seeds here; twenty at the default run's data in benchmarks/audit-soundness.md."""
    for epsilon in (1.0, 8.0):
        w = audit_of(tiny_model, digit_examples, epsilon, **{"audit.gradient_canaries": 20000, "training.seed": seed})
        assert not w["violation"], w["flags"]
        assert w["epsilon_one_run"] <= epsilon and w["parametric"]["epsilon_lower_bound"] <= epsilon


@pytest.mark.slow
@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_every_fault_of_the_zoo_is_caught_at_claimed_epsilon_one_or_explained(tiny_model, digit_examples, fault):
    """On the audit block; a fault it cannot see in principle says why, and the placement on the
    model's own coordinates catches the one that passes through real layers' gradients."""
    explained = FAULTS.get(fault).unseen_by_canaries
    placement = "model" if fault == "clip-skip-language-model" else "audit-block"
    # on the model each canary goes through the step's own clipping one at a time, so fewer of them:
    # 2000 still flag this fault by every bound at ε 1 (one-run ε̂ about 5)
    canaries = 2000 if placement == "model" else 20000
    w = audit_of(
        tiny_model,
        digit_examples,
        1.0,
        fault,
        **{"audit.gradient_canaries": canaries, "audit.canary_placement": placement},
    )
    if explained and placement == "audit-block":
        assert not w["violation"]  # honest: it is not seen, and the zoo says why
        return
    assert w["violation"], w["flags"]
    if placement == "model":
        assert all(w["flags"].values()), w["flags"]
    if placement == "audit-block":
        assert w["parametric"]["off"]  # and it names what is off


@pytest.mark.parametrize("method", ["dpsgd", "dualpriv"])
def test_the_audit_does_not_change_training(fresh_tiny_model, digit_examples, method):
    """The canaries sit on the audit block: the same seed trains the same model with or without them
    (dualpriv: its update pruning prunes the block by the same rule, on its own)."""
    from dpbench.methods.update_pruning import UpdatePruner

    runs = []
    for m in (0, 2000):
        model = fresh_tiny_model()
        model.set_trainable(["projector", "language_model"])
        s = spec(**{"training.steps": 5, "training.batch_size": 4, "audit.gradient_canaries": m})
        hook = UpdatePruner(0.6) if method == "dualpriv" else None
        report = train_dp_sgd(model, digit_examples, s, DELTA, label="test", post_noise_hook=hook)
        runs.append((report.losses, [p.detach().clone() for p in model.model.parameters()]))
        assert (report.whitebox is not None) == (m > 0)
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


def test_no_noise_reaches_the_audits_ceiling(tiny_model, digit_examples):
    """Non-private training: the canaries are seen exactly, so the bound is near its ceiling."""
    tiny_model.set_trainable(["projector", "language_model"])
    s = spec(**{"training.steps": 30, "training.batch_size": 4, "audit.gradient_canaries": 1000})
    w = NonPrivate().train(tiny_model, digit_examples, s.replace(method="nonprivate"), DELTA).whitebox
    assert w["accounted_epsilon"] is None and not w["violation"]
    # the ceiling (every guess right) at Steinke's share of the 5 %: a bound that reaches it is as strong as 1000 can be
    assert w["epsilon_lower_bound"] >= 0.9 * w["ceiling"] and w["ceiling"] > 3.4


def test_dpzo_canaries_are_sound_and_say_how_weak_they_are(tiny_model, digit_examples):
    tiny_model.set_trainable(["projector"])
    s = spec(**{"method": "dpzo", "training.steps": 20, "training.batch_size": 4, "privacy.epsilon": 1.0})
    w = DPZO().train(tiny_model, digit_examples, s, DELTA).whitebox
    assert w["epsilon_lower_bound"] <= 1.0 and w["steps_observed"] == 20 and "weak by design" in w["note"]
    assert w["canary_steps"] > 0


def test_gradient_canaries_are_refused_below_two():
    from dpbench.errors import DpbenchError

    with pytest.raises(DpbenchError, match="gradient_canaries"):
        RunSpec().replace(**{"audit.gradient_canaries": 1})


def separable_canaries(noise_multiplier: float) -> gradient_canaries.GradientCanaries:
    """1000 canaries whose scores separate exactly; seed 1 includes 525 of them, not 500."""
    import torch

    c = gradient_canaries.GradientCanaries(
        m=1000,
        seed=1,
        rate=0.05,
        clip=1.0,
        noise_multiplier=noise_multiplier,
        params=[torch.nn.Parameter(torch.zeros(2000))],
    )
    c.scores = np.where(c.included, 4.0, -1.0 if noise_multiplier > 0 else 0.0)
    return c


@pytest.mark.parametrize("noise_multiplier", [0.0, 0.7])
def test_guesses_split_as_the_scores_do_so_a_separable_run_is_right_at_every_count(noise_multiplier):
    c = separable_canaries(noise_multiplier)
    assert c.included.sum() != 500  # else a half/half split would be right as well
    w = gradient_canaries.whitebox_section(c, 7e-5, None, "test")
    assert w["fraction_called_in"] == c.included.mean()
    assert w["guesses"] == w["correct"] == 1000 and w["epsilon_lower_bound"] == pytest.approx(w["ceiling"])


def test_the_guess_split_reads_the_scores_not_the_inclusion():
    """Soundness: shuffling which canaries were included moves the right-guess count, never the split."""
    c = separable_canaries(0.7)
    split = c.fraction_called_in()
    c.included = np.random.default_rng(0).permutation(c.included)
    w = gradient_canaries.whitebox_section(c, 7e-5, None, "test")
    assert w["fraction_called_in"] == split and w["correct"] < w["guesses"]


def test_guess_pairs_keep_each_count_and_follow_the_split():
    from dpbench.attacks.canary_audit import guess_pairs

    assert guess_pairs(100) == [(k, k) for k in (2, 5, 10, 25, 50)]
    for fraction in (0.0, 0.3, 0.525, 1.0):
        pairs = guess_pairs(1000, fraction)
        assert [a + b for a, b in pairs] == [50, 100, 200, 500, 1000]
        assert all(abs(a - fraction * (a + b)) <= 0.5 for a, b in pairs)
    with pytest.raises(ValueError):
        guess_pairs(10, 1.5)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_gradient_method_audits_its_own_mechanism_by_default(name):
    """A plain run of any method that steps on gradients carries the white-box audit on the audit
    block; dpzo releases one scalar a step, so there its canaries are opt-in (they change training)."""
    expected = 0 if issubclass(METHODS.get(name), DPZO) else AUDIT_CANARIES
    s = RunSpec(method=name)
    assert s.audit.gradient_canaries == expected and s.audit.canary_placement == "audit-block"


def test_the_auditor_keeps_a_bounded_record():
    """Every release of every canary is kept: a spec whose product would not fit is refused first."""
    from dpbench.errors import DpbenchError
    from dpbench.spec import MAX_CANARY_RELEASES

    RunSpec().replace(**{"training.steps": MAX_CANARY_RELEASES // AUDIT_CANARIES})
    with pytest.raises(DpbenchError, match="gradient_canaries × training.steps"):
        RunSpec().replace(**{"training.steps": MAX_CANARY_RELEASES // AUDIT_CANARIES + 1})


def test_a_long_run_defaults_to_as_many_canaries_as_the_auditor_may_keep():
    from dpbench.spec import MAX_CANARY_RELEASES, TrainingSpec

    steps = 4 * MAX_CANARY_RELEASES // AUDIT_CANARIES
    s = RunSpec(training=TrainingSpec(steps=steps))
    assert s.audit.gradient_canaries == MAX_CANARY_RELEASES // steps == AUDIT_CANARIES // 4
    assert RunSpec().audit.gradient_canaries == AUDIT_CANARIES


def test_the_white_box_analysis_runs_once_when_first_read():
    """Methods hand their report the analysis, not its result: phases time training without it."""
    from dpbench.methods.base import TrainReport
    from dpbench.privacy import PrivacyReport

    calls = []
    report = TrainReport(
        1, 0.1, [], PrivacyReport.non_private(1), whitebox_audit=lambda: calls.append(1) or ({"m": 2}, (1, 2))
    )
    assert calls == []
    assert report.whitebox == {"m": 2} and report.whitebox_scores == (1, 2) and calls == [1]
    assert TrainReport(1, 0.1, [], PrivacyReport.non_private(1)).whitebox is None


def test_the_audits_shares_hold_violation_at_the_stated_confidence(tiny_model, digit_examples):
    """Weighted Bonferroni: each audit's 1 - level is its share of 1 - confidence, and the shares
    cover it exactly, so the union of the three flags errs at most 1 - confidence."""
    tiny_model.set_trainable(["projector"])
    s = spec(**{"training.steps": 10, "training.batch_size": 4, "audit.gradient_canaries": 500})
    w = train_dp_sgd(tiny_model, digit_examples, s, DELTA, label="test").whitebox
    each = w["confidence_each"]
    assert set(each) == set(gradient_canaries.AUDIT_SHARES) == {"steinke", "fdp", "parametric"}
    assert sum(1 - level for level in each.values()) == pytest.approx(1 - w["confidence"])
    assert all(w["confidence"] < level < 1 for level in each.values())


def test_the_f_dp_guess_count_is_planned_from_the_claim_alone(isolated_cache):
    """The count depends on the claim (m, σ, rate, steps, δ, level), is one of the planned fractions of m,
    and is as good, on a fresh simulation of the claim, as the count that simulation finds best: the
    bounds at the mean right guesses rounded down, a wrong guess's worth apart at most."""
    gradient_canaries.planned_guesses.cache_clear()
    m, sigma, rate, steps, delta, level = 4000, 0.8, 0.1, 40, 1e-5, 0.96
    k = gradient_canaries.planned_guesses(m, sigma, rate, steps, delta, level)
    assert k in {int(f * m) for f in (0.005, 0.01, 0.02, 0.05)}
    rng = np.random.default_rng(12345)
    right = {}
    for _ in range(8):
        included = rng.random(m) < 0.5
        scores = np.zeros(m)
        for _ in range(steps):
            y = (included & (rng.random(m) < rate)) + sigma * rng.standard_normal(m)
            scores += np.logaddexp(np.log1p(-rate), np.log(rate) + (y - 0.5) / sigma**2)
        order = np.argsort(-scores)
        for c in (20, 40, 80, 200):
            right[c] = right.get(c, 0.0) + included[order[:c]].sum() / 8
    bound = {
        c: gradient_canaries.fdp_composed_bound(rate, steps, delta, m, c, int(r), level)[1] for c, r in right.items()
    }
    assert bound[k] >= 0.85 * max(bound.values())
    assert bound[k] > min(bound.values())  # not merely any count: the worst is a third below the best here


def test_the_planned_guess_count_is_kept_on_disk_by_its_claim(isolated_cache, monkeypatch):
    """A second process (the in-memory cache cleared) at the same claim reads the count from
    `$DPBENCH_CACHE` and simulates nothing; another claim simulates again."""
    args = (400, 0.8, 0.1, 10, 1e-5, 0.96)
    gradient_canaries.planned_guesses.cache_clear()
    first = gradient_canaries.planned_guesses(*args)
    calls = []
    real = gradient_canaries._plan_guesses
    monkeypatch.setattr(gradient_canaries, "_plan_guesses", lambda *a: calls.append(a) or real(*a))
    gradient_canaries.planned_guesses.cache_clear()
    assert gradient_canaries.planned_guesses(*args) == first and calls == []
    gradient_canaries.planned_guesses(400, 0.9, 0.1, 10, 1e-5, 0.96)
    assert calls == [(400, 0.9, 0.1, 10, 1e-5, 0.96)]
