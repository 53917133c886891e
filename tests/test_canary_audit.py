"""The one-run canary audit: canaries are mislabelled, included w.p. ½ reproducibly from the
seed; the bound is 0 for uninformative scores and positive for informative ones."""

import numpy as np
import pytest

from dpbench.attacks.canary_audit import (
    GUESS_FRACTIONS,
    TOKENS_PER_TARGET,
    canary_section,
    load_canary_scores,
    make_canaries,
    one_run_audit,
)
from dpbench.errors import DpbenchError
from dpbench.run_folder import RunFolder
from dpbench.tasks.base import Example


def training_set(n: int, choices: bool = True) -> list[Example]:
    if choices:
        return [
            Example(
                uid=f"e{i}", prompt=f"q{i}", target="ABC"[i % 3], choices=("A", "B", "C"), answer=i % 3, group=f"img{i}"
            )
            for i in range(n)
        ]
    return [Example(uid=f"e{i}", prompt=f"q{i}", target=f"caption {i % 7}", group=f"img{i}") for i in range(n)]


def test_inclusion_is_bernoulli_half_and_reproducible():
    train = training_set(4000)
    canaries = make_canaries(train, 4000, seed=3, kind="mislabelled")
    k = int(canaries.included.sum())
    assert abs(k - 2000) < 4.5 * np.sqrt(4000 * 0.25)  # Binomial(4000, ½): 4.5 sd
    # no drift along the sequence: each quarter is about half in too
    for quarter in np.split(canaries.included, 4):
        assert abs(quarter.mean() - 0.5) < 4.5 * np.sqrt(0.25 / 1000)
    again = make_canaries(train, 4000, seed=3, kind="mislabelled")
    assert again.examples == canaries.examples and np.array_equal(again.included, canaries.included)
    other = make_canaries(train, 4000, seed=4, kind="mislabelled")
    assert not np.array_equal(other.included, canaries.included)
    assert canaries.included_examples() == [e for e, i in zip(canaries.examples, canaries.included) if i]


def test_canaries_are_mislabelled_copies_of_distinct_training_examples():
    train = training_set(50)
    by_uid = {e.uid: e for e in train}
    canaries = make_canaries(train, 20, seed=0, kind="mislabelled")
    assert len({e.uid for e in canaries.examples}) == 20
    bases = [by_uid[e.uid.split("-", 2)[2]] for e in canaries.examples]
    assert len({b.uid for b in bases}) == 20
    for c, b in zip(canaries.examples, bases):
        assert (c.prompt, c.image, c.group) == (b.prompt, b.image, b.group)
        assert c.target != b.target and c.target == c.choices[c.answer]
    for c in make_canaries(training_set(50, choices=False), 20, seed=0, kind="mislabelled").examples:
        assert c.target.startswith("caption") and c.target != f"caption {int(c.uid.split('-e')[1]) % 7}"
    with pytest.raises(DpbenchError, match="exceeds"):
        make_canaries(train, 51, seed=0, kind="mislabelled")


def test_memorable_canaries_use_tokens_no_training_target_uses(tiny_model, isolated_cache):
    from PIL import Image

    tok = tiny_model.tokenizer
    train = training_set(60)
    canaries = make_canaries(train, 20, seed=0, kind="memorable", tokenizer=tok)
    used = {i for e in train for i in tok(e.target, add_special_tokens=False)["input_ids"]}
    seen = set()
    for c in canaries.examples:
        ids = tok(c.target, add_special_tokens=False)["input_ids"]
        assert len(ids) == TOKENS_PER_TARGET and not set(ids) & used and not set(ids) & seen  # rare, its own
        seen |= set(ids)
        assert c.choices == () and Image.open(c.image).size == (32, 32)
    again = make_canaries(train, 20, seed=0, kind="memorable", tokenizer=tok)
    assert [c.target for c in again.examples] == [c.target for c in canaries.examples]
    # another m draws other noise for the same index: the cached image must be that m's own
    more = make_canaries(train, 30, seed=0, kind="memorable", tokenizer=tok)
    assert more.examples[0].image != canaries.examples[0].image
    assert (
        np.asarray(Image.open(more.examples[0].image)).tobytes()
        != np.asarray(Image.open(canaries.examples[0].image)).tobytes()
    )
    with pytest.raises(DpbenchError, match="--canaries"):
        make_canaries(training_set(2000), 2000, seed=0, kind="memorable", tokenizer=tok)


@pytest.mark.parametrize("seed", range(5))
def test_uninformative_scores_give_no_bound(seed):
    rng = np.random.default_rng(seed)
    included = rng.random(1000) < 0.5
    audit = one_run_audit(rng.normal(size=1000), included, delta=1e-5)
    assert audit["epsilon_lower_bound"] == 0.0
    tied = one_run_audit(np.zeros(1000), included, delta=1e-5)  # a model that learnt nothing
    assert tied["epsilon_lower_bound"] == 0.0


def test_informative_scores_give_a_positive_bound():
    rng = np.random.default_rng(0)
    included = rng.random(1000) < 0.5
    perfect = one_run_audit(included + rng.normal(0, 0.01, 1000), included, delta=1e-5)
    assert perfect["correct"] == perfect["guesses"] > 0
    assert perfect["epsilon_lower_bound"] > 2.0
    noisy = one_run_audit(included + rng.normal(0, 1.0, 1000), included, delta=1e-5)
    assert 0 < noisy["epsilon_lower_bound"] < perfect["epsilon_lower_bound"]
    assert noisy["guess_fractions"] == list(GUESS_FRACTIONS) and noisy["m"] == 1000


def test_canary_section_records_what_the_result_schema_needs():
    included = np.array([True, False] * 10)
    section = canary_section(included, included.astype(float), seed=7, delta=1e-5)
    assert {"m", "included", "guesses", "correct", "epsilon_lower_bound", "confidence", "seed", "note"} <= set(section)
    assert section["included"] == 10 and section["seed"] == 7 and "canar" in section["note"]


def test_report_shows_the_canary_row_and_notes(tmp_path):
    from dpbench.attacks.metrics import attack_summary
    from dpbench.attacks.report import verdict, write_report

    rng = np.random.default_rng(0)
    scores = {"loss": (rng.normal(0, 1, 100), rng.normal(0, 1, 100))}
    included = rng.random(200) < 0.5
    result = {
        "run_id": "r",
        "spec": {"method": "dpsgd"},
        "privacy": {"epsilon": 0.5, "delta": 1e-5},
        "utility": {"notes": ["<b>trained with canaries</b>"]},
        "audit": {
            "n_members": 100,
            "n_nonmembers": 100,
            "confidence": 0.95,
            "attacks": {"loss": attack_summary(*scores["loss"], delta=1e-5)},
            "notes": ["lira, rmia not run"],
            "canary": canary_section(included, included.astype(float), seed=0, delta=1e-5),
        },
    }
    md, page = write_report(RunFolder(tmp_path), result, scores)
    text = md.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| one-run canary audit |"))
    eps = result["audit"]["canary"]["epsilon_lower_bound"]
    assert eps > 0.5 and row.rstrip(" |").endswith(f"{eps:.2f} | 0.50")
    assert "## Notes" in text and "lira, rmia not run" in text and "<b>" not in page.read_text()
    assert "one-run canary audit ε̂" in verdict(result)  # a perfect canary guess beats ε = 0.5: flagged


# -- end to end on a tiny random LLaVA saved as a local checkpoint -------------------------


@pytest.mark.slow
def test_run_with_reference_models_and_canaries(checkpoint, tmp_path, monkeypatch):
    import shutil

    from dpbench import phases
    from dpbench.reaudit import reaudit
    from dpbench.runner import run
    from dpbench.schemas import validation_errors
    from dpbench.spec import RunSpec

    spec = RunSpec.from_dict(
        {
            "method": "nonprivate",
            "model": str(checkpoint),
            "eval_limit": 8,
            "attacks": ["loss", "lira", "rmia"],
            "training": {"steps": 2, "batch_size": 8, "n_train": 16},
            "audit": {"references": 2, "reference_steps": 2, "canaries": 8},
        }
    )
    result = run(spec, tmp_path, save_checkpoint=True, log=lambda *_: None).to_dict()
    assert validation_errors(result) == []
    audit, run_dir = result["audit"], tmp_path / result["run_id"]
    assert set(audit["attacks"]) == {"loss", "lira", "rmia"} and audit["notes"] == []
    assert audit["references"]["models"] == 2 and audit["references"]["steps"] == 2
    assert 0.0 <= audit["references"]["rmia_offline_a"] <= 1.0
    canary = audit["canary"]
    assert canary["m"] == 8 and canary["guesses"] > 0
    # the recorded bound is the one-run audit of the saved scores at the run's δ (not merely >= 0, as the schema says)
    included, scores = load_canary_scores(RunFolder.of(tmp_path, result["run_id"]))
    delta = result["privacy"]["delta"] or phases.run_delta(spec, result["dataset"]["n_train"])
    assert canary == canary_section(included, scores, spec.training.seed, delta)
    assert canary["included"] == int(included.sum()) and scores.shape == (8,)
    # the canaries that went in were trained on, on top of the 16 examples; members are only real examples
    assert result["dataset"]["n_canaries"] == canary["included"]
    assert result["dataset"]["n_train"] == 16 + canary["included"] and audit["n_members"] == 16
    assert any("canaries" in note for note in result["utility"]["notes"])
    assert "One-run canary audit" in (run_dir / "audit.md").read_text()

    # re-audit from the checkpoint: the cached reference losses are reused, nothing is trained
    def no_training(*_, **__):
        raise AssertionError("reference models were trained again")

    monkeypatch.setattr(phases, "train_reference", no_training)
    again = reaudit(run_dir).to_dict()["audit"]
    for name in ("lira", "rmia"):
        assert again["attacks"][name]["auc"] == pytest.approx(audit["attacks"][name]["auc"])
    assert again["canary"]["correct"] == canary["correct"]
    # and from the saved scores alone
    shutil.rmtree(run_dir / "checkpoint")
    third = reaudit(run_dir).to_dict()
    assert validation_errors(third) == [] and third["audit"]["canary"] == again["canary"]
    assert third["audit"]["references"] == audit["references"]


@pytest.mark.slow
def test_zero_references_skip_lira_and_rmia_with_a_note(checkpoint, tmp_path):
    from dpbench.runner import run
    from dpbench.schemas import validation_errors
    from dpbench.spec import RunSpec

    spec = RunSpec.from_dict(
        {
            "method": "nonprivate",
            "model": str(checkpoint),
            "eval_limit": 4,
            "attacks": ["lira", "rmia"],
            "training": {"steps": 1, "batch_size": 4, "n_train": 8},
            "audit": {"references": 0},
        }
    )
    result = run(spec, tmp_path, log=lambda *_: None).to_dict()
    assert validation_errors(result) == []
    assert result["audit"]["attacks"] == {} and "audit.references = 0" in result["audit"]["notes"][0]
    assert result["dataset"]["n_canaries"] == 0 and result["utility"]["notes"] == []
