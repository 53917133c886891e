"""ScienceQA in both published layouts (fixtures written here), the embedded sample, prompts."""

import json

import pytest
from PIL import Image

from dpbench.errors import DpbenchError
from dpbench.tasks import scienceqa_embedded
from dpbench.tasks.base import Example
from dpbench.tasks.scienceqa import ScienceQA, build_prompt, read_scienceqa


def test_prompt_is_lmms_eval_scienceqa_img():
    assert build_prompt("Mammals breathe air.", "Which animal is a mammal?", ["frog", "whale"]) == (
        "Context: Mammals breathe air.\nWhich animal is a mammal?\nA. frog\nB. whale\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert build_prompt("", "Q?", ["x", "y"]).startswith("Q?\nA. x")


def test_layout_a_reads_image_problems_only_and_keeps_splits_image_disjoint(tmp_path, write_layout_a):
    data = ScienceQA().load(str(write_layout_a(tmp_path)))
    assert [e.uid for e in data.train] == ["1"]
    # problem 3 has no image (not ScienceQA-IMG); problem 5 shows problem 1's training image
    assert [e.uid for e in data.nonmembers] == ["2"]
    assert [e.uid for e in data.test] == ["4"]
    e = data.train[0]
    assert (e.target, e.choices, e.answer) == ("B", ("A", "B", "C"), 1)
    assert data.source == "local" and data.layout == "problems.json"


def test_layout_b_parquet(tmp_path, isolated_cache, write_layout_b):
    data = ScienceQA().load(str(write_layout_b(tmp_path / "hf")))
    assert len(data.train) == 1 and len(data.test) == 1 and len(data.nonmembers) == 2
    assert data.layout == "parquet"
    assert data.test[0].prompt.startswith("Context: Look up.\nWhich color is the sky?\nA. blue")
    assert Image.open(data.test[0].image).size == (20, 20)


def test_both_layouts_run_through_evaluation(tmp_path, isolated_cache, tiny_model, write_layout_a, write_layout_b):
    for root in (write_layout_a(tmp_path / "a"), write_layout_b(tmp_path / "b")):
        data = ScienceQA().load(str(root))
        acc = ScienceQA().evaluate(tiny_model, data.train + data.nonmembers + data.test)["accuracy"]
        assert 0.0 <= acc <= 1.0


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda r: (r / "problems.json").write_text("{not json"), "not valid JSON"),
        (lambda r: (r / "images" / "train" / "1" / "image.png").unlink(), "missing image"),
        (lambda r: (r / "pid_splits.json").write_text('{"train": ["1"]}'), "no 'val' split"),
    ],
)
def test_corrupt_data_is_one_clear_error(tmp_path, damage, message, write_layout_a):
    root = write_layout_a(tmp_path)
    damage(root)
    with pytest.raises(DpbenchError, match=message):
        read_scienceqa(root)


def edit_problem(change):
    def damage(root):
        problems = json.loads((root / "problems.json").read_text())
        change(problems["1"])
        (root / "problems.json").write_text(json.dumps(problems))

    return damage


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda r: (r / "problems.json").write_text("[1, 2]"), "must map problem ids to problems, got a list"),
        (lambda r: (r / "pid_splits.json").write_text('{"train": 1}'), "must map split names to lists"),
        (edit_problem(lambda p: p.pop("choices")), r"problem 1: no 'choices' field"),
        (edit_problem(lambda p: p.pop("question")), r"problem 1: no 'question' field"),
        (edit_problem(lambda p: p.update(choices="frog")), r"problem 1: choices must be a list"),
        (edit_problem(lambda p: p.update(choices=["one"])), r"problem 1: choices must be a list of at least two"),
        (edit_problem(lambda p: p.update(answer=7)), r"problem 1: answer must be an index into its 3 choices"),
        (edit_problem(lambda p: p.update(answer="1")), r"problem 1: answer must be an index"),
        (edit_problem(lambda p: p.update(answer=True)), r"problem 1: answer must be an index"),
        (edit_problem(lambda p: p.update(question=["q"])), r"problem 1: question must be text"),
        (edit_problem(lambda p: p.update(hint=3)), r"problem 1: hint must be text or null"),
        (edit_problem(lambda p: p.update(image=5)), r"problem 1: image must be a file name or null"),
        (lambda r: (r / "images" / "train" / "1" / "image.png").write_bytes(b"not a png"), "unreadable image"),
    ],
)
def test_bad_records_name_the_file_and_the_record(tmp_path, damage, message, write_layout_a):
    root = write_layout_a(tmp_path)
    damage(root)
    with pytest.raises(DpbenchError, match=message) as info:
        read_scienceqa(root)
    assert "\n" not in str(info.value)


def test_missing_dir_and_foreign_dir(tmp_path):
    with pytest.raises(DpbenchError, match="does not exist"):
        read_scienceqa(tmp_path / "nope")
    with pytest.raises(DpbenchError, match="neither problems.json"):
        read_scienceqa(tmp_path)


def test_embedded_sample_is_large_varied_and_image_disjoint(isolated_cache):
    root = scienceqa_embedded.build(isolated_cache / "sqa")
    problems = json.loads((root / "problems.json").read_text())
    splits = json.loads((root / "pid_splits.json").read_text())
    assert len(problems) >= 2000
    assert {len(p["choices"]) for p in problems.values()} == {2, 3, 4, 5}
    assert len({p["question"].split(" than ")[0] for p in problems.values()}) >= 4
    assert any(p["hint"] for p in problems.values()) and any(not p["hint"] for p in problems.values())
    images = {s: {problems[pid]["source_image"] for pid in splits[s]} for s in ("train", "val", "test")}
    assert (
        not images["train"] & images["val"]
        and not images["train"] & images["test"]
        and not images["val"] & images["test"]
    )
    # no image of the public pre-training pool appears in the private task
    from dpbench.tasks.digits import public_digits

    public = {f"sklearn-digits/{d.index}" for d in public_digits()}
    assert not public & set().union(*images.values())
    data = ScienceQA().load(None)
    assert data.source == "embedded-sample" and len(data.train) == len(splits["train"])


class FixedScores:
    """A model whose option scores are given: the argmax is the option at `picks[uid]`."""

    def __init__(self, picks: dict[str, int]):
        self.picks = picks

    def choice_loglikelihoods(self, examples):
        return [[0.0 if i == self.picks[e.uid] else -1.0 for i in range(len(e.choices))] for e in examples]


def test_accuracy_is_broken_down_by_subject_and_grade_band_as_in_the_scienceqa_paper():
    rows = [
        ("natural science", "grade2", True),
        ("natural science", "grade8", False),
        ("language science", "grade3", True),
        ("language science", "grade12", True),
        ("social science", "grade5", False),
        ("natural science", "unknown", True),
    ]
    examples = [
        Example(
            uid=str(i), prompt="q", target="A", choices=("A", "B"), answer=0, meta={"subject": subject, "grade": grade}
        )
        for i, (subject, grade, _) in enumerate(rows)
    ]
    model = FixedScores({str(i): 0 if ok else 1 for i, (_, _, ok) in enumerate(rows)})
    metrics = ScienceQA().evaluate(model, examples, batch_size=4)
    assert metrics == pytest.approx(
        {
            "accuracy": 4 / 6,
            "accuracy_NAT": 2 / 3,
            "accuracy_LAN": 1.0,
            "accuracy_SOC": 0.0,
            "accuracy_G1-6": 2 / 3,
            "accuracy_G7-12": 1 / 2,
        }
    )  # "unknown" has no band: 5 examples banded
