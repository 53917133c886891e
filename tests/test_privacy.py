"""Accounting checked against an independent implementation (Google's dp-accounting)."""

import functools

import pytest

from dpbench.errors import DpbenchError
from dpbench.privacy import calibrate_noise, check_delta, default_delta, spent_epsilon


# the last two: large σ, where Opacus' default orders (up to 63) overstate ε 2 to 20 times
@pytest.mark.parametrize(
    "sigma, q, steps", [(0.8, 0.05, 150), (1.2, 0.01, 1000), (3.0, 0.1, 50), (20.0, 0.0435, 150), (40.0, 0.0435, 3)]
)
def test_rdp_epsilon_matches_dp_accounting_within_one_percent(sigma, q, steps, dp_accounting_epsilon):
    delta = 1e-5
    ours = spent_epsilon(noise_multiplier=sigma, delta=delta, sample_rate=q, steps=steps, accountant="rdp")
    assert ours == pytest.approx(dp_accounting_epsilon(sigma, q, steps, delta), rel=0.01)


@pytest.mark.parametrize(
    "sigma, q, steps", [(0.709, 1 / 23, 150), (0.6656, 1 / 23, 150), (2.0, 0.05, 300), (1.0, 0.01, 1000)]
)
def test_prv_epsilon_matches_dp_accountings_pld_within_one_percent(sigma, q, steps, dp_accounting_pld_epsilon):
    delta = 6.94e-5
    ours = spent_epsilon(noise_multiplier=sigma, delta=delta, sample_rate=q, steps=steps, accountant="prv")
    assert ours == pytest.approx(dp_accounting_pld_epsilon(sigma, q, steps, delta), rel=0.01)


def test_the_default_run_is_calibrated_and_accounted_tightly(isolated_cache, dp_accounting_pld_epsilon):
    """The spec's default accountant is PRV: at the default run's rate and steps, ε = 8 needs less
    noise than RDP asks for, and what it spends is dp-accounting's PLD figure within 1 %."""
    from dpbench.spec import RunSpec

    assert RunSpec().privacy.accountant == "prv"
    kw = dict(delta=6.944e-5, sample_rate=1 / 23, steps=150)
    tight = calibrate_noise(target_epsilon=8.0, accountant="prv", **kw)
    loose = calibrate_noise(target_epsilon=8.0, accountant="rdp", **kw)
    assert tight < 0.95 * loose
    eps = spent_epsilon(noise_multiplier=tight, accountant="prv", **kw)
    assert eps <= 8.0 and eps == pytest.approx(
        dp_accounting_pld_epsilon(tight, kw["sample_rate"], 150, kw["delta"]), rel=0.01
    )


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
@pytest.mark.parametrize("target", [1.0, 8.0])
def test_calibrated_sigma_spends_at_most_the_target(accountant, target):
    kw = dict(delta=1e-5, sample_rate=0.05, steps=200, accountant=accountant)
    sigma = calibrate_noise(target_epsilon=target, **kw)
    spent = spent_epsilon(noise_multiplier=sigma, **kw)
    assert spent <= target and spent == pytest.approx(target, rel=0.02)
    # a little less noise would overspend: sigma is not needlessly large
    assert spent_epsilon(noise_multiplier=sigma * 0.97, **kw) > target


def test_calibrating_the_default_run_raises_no_warning(isolated_cache):
    """Opacus' σ search starts at σ = 20, where its default orders warn that the best is the
    largest: the wider grid makes that search, and the default run, silent."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sigma = calibrate_noise(target_epsilon=8.0, delta=6.944e-5, sample_rate=1 / 23, steps=150, accountant="rdp")
    assert sigma == pytest.approx(0.7094, abs=1e-3)


def test_delta_must_be_below_one_over_n():
    check_delta(default_delta(1000), 1000)
    with pytest.raises(DpbenchError, match="1/n_train"):
        check_delta(1 / 999, 1000)


def test_calibration_is_cached_on_disk_by_its_arguments(isolated_cache, monkeypatch):
    import dpbench.privacy as privacy

    args = dict(target_epsilon=3.0, delta=1e-5, sample_rate=0.05, steps=40, accountant="rdp")
    sigma = calibrate_noise(**args)
    calls = []
    real = privacy.get_noise_multiplier
    monkeypatch.setattr(privacy, "get_noise_multiplier", lambda **kw: calls.append(kw) or real(**kw))
    assert calibrate_noise(**args) == sigma and calls == []  # from the file
    other = calibrate_noise(**{**args, "steps": 80})
    assert len(calls) == 1 and other > sigma  # new arguments: computed, and more steps need more noise
    (isolated_cache / privacy.CALIBRATION_CACHE).write_text("{corrupt")
    assert calibrate_noise(**args) == sigma and len(calls) == 2  # an unreadable cache is recomputed


def test_every_committed_epsilon_is_what_dp_accounting_gives_for_its_recorded_release(
    committed_results, dp_accounting_epsilon, dp_accounting_pld_epsilon
):
    """The record, not the code path: an auditor holding only result.json (σ, sample rate,
    steps, δ) must get the ε it reports from dp-accounting (PLD for a PRV headline, RDP for an
    RDP one and for the RDP figure beside a PRV headline), and never more than the target."""
    oracles = {"prv": functools.cache(dp_accounting_pld_epsilon), "rdp": functools.cache(dp_accounting_epsilon)}
    # Opacus' PRV reports the upper end of its ε interval (get_epsilon's eps_error, 0.01 absolute):
    # 1.02 % above PLD near ε = 1, 0.13 % at ε = 8
    slack = {"prv": 0.011, "rdp": 0.0}
    private = [r for r in committed_results if r["privacy"]["private"]]
    assert len(private) >= 20 and {r["privacy"]["accountant"] for r in private} <= set(oracles)
    for r in private:
        p = r["privacy"]
        release = (p["noise_multiplier"], p["sample_rate"], p["steps"] * p["releases_per_step"], p["delta"])
        oracle = oracles[p["accountant"]](*release)
        assert p["epsilon"] == pytest.approx(oracle, rel=0.01, abs=slack[p["accountant"]]), r["run_id"]
        assert p["epsilon"] <= p["target_epsilon"], r["run_id"]
        if p.get("epsilon_rdp") is not None:
            assert p["epsilon_rdp"] == pytest.approx(oracles["rdp"](*release), rel=0.01), r["run_id"]


def test_a_remembered_answer_is_read_back_and_a_bad_entry_computed_again(isolated_cache):
    from dpbench.cache import remembered

    calls = []
    compute = lambda: calls.append(1) or 2.5  # noqa: E731
    assert remembered("memo.json", ["a", 1], compute) == 2.5 and remembered("memo.json", ["a", 1], compute) == 2.5
    assert len(calls) == 1
    (isolated_cache / "memo.json").write_text('{"[\\"a\\", 1]": "text"}')  # not a float: computed again
    assert remembered("memo.json", ["a", 1], compute) == 2.5 and len(calls) == 2
    assert remembered("memo.json", ["b"], lambda: 7, kind=int) == 7


def test_a_cache_that_cannot_be_made_or_written_costs_a_recompute_not_the_run(tmp_path, monkeypatch):
    from dpbench.cache import remembered

    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("DPBENCH_CACHE", str(tmp_path / "afile" / "cache"))  # under a file: not even root makes it
    calls = []
    compute = lambda: calls.append(1) or 2.5  # noqa: E731
    assert remembered("memo.json", ["a"], compute) == 2.5 and remembered("memo.json", ["a"], compute) == 2.5
    assert len(calls) == 2  # nothing kept
    monkeypatch.setenv("DPBENCH_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / "memo.json").mkdir(parents=True)  # the memo's place taken: it cannot be written
    assert remembered("memo.json", ["a"], compute) == 2.5 and len(calls) == 3
