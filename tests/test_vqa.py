"""VQAv2: the official layout (fixtures written here), the standard VQA accuracy, the embedded
sample, and greedy generation through the model wrapper."""

import json
from collections import Counter

import pytest
from PIL import Image

from dpbench.errors import DpbenchError
from dpbench.tasks import vqa_embedded
from dpbench.tasks.base import Example
from dpbench.tasks.coco import val_half
from dpbench.tasks.vqa import VQAv2, build_prompt, read_vqav2
from dpbench.tasks.vqa_metrics import normalize_answer, vqa_accuracy


# -- the metric ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw, normalized",
    [
        ("Two", "2"),
        ("a dog.", "dog"),
        ("isnt", "isn't"),
        ("Yes!", "yes"),
        ("  The  Cat ", "cat"),
        ("2.5", "2.5"),  # a period before a digit stays
        ("1,000", "1000"),
        ("red, white", "red white"),
        ("T-shirt", "t shirt"),
        ("none", "0"),
        ("dont know", "don't know"),
    ],
)
def test_answer_normalisation(raw, normalized):
    assert normalize_answer(raw) == normalized


def _by_hand(n_match: int, n: int = 10) -> float:
    """Mean over the 10 leave-one-out subsets of min(matches among the other 9 / 3, 1)."""
    left_out_match = [min((n_match - 1) / 3, 1)] * n_match
    left_out_other = [min(n_match / 3, 1)] * (n - n_match)
    return sum(left_out_match + left_out_other) / n


def test_vqa_accuracy_with_disagreeing_annotators():
    two_yes = ["yes", "yes"] + ["no"] * 8
    # 2 of 10 say yes: leaving out a "yes" leaves 1 (1/3), leaving out a "no" leaves 2 (2/3)
    assert vqa_accuracy("yes", two_yes) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10) == pytest.approx(0.6)
    assert vqa_accuracy("no", two_yes) == 1.0
    assert vqa_accuracy("maybe", two_yes) == 0.0
    for k in range(11):
        answers = ["red"] * k + ["blue"] * (10 - k)
        assert vqa_accuracy("red", answers) == pytest.approx(_by_hand(k))
    assert vqa_accuracy("red", ["red"] * 3 + ["blue"] * 7) == pytest.approx(0.9)
    assert vqa_accuracy("red", ["red"] + ["blue"] * 9) == pytest.approx(0.3)


def test_vqa_accuracy_normalises_prediction_and_answers():
    assert vqa_accuracy("Two", ["two"] * 4 + ["2"] * 6) == 1.0
    assert vqa_accuracy("A dog.", ["dog"] * 2 + ["cat"] * 8) == pytest.approx(0.6)
    assert vqa_accuracy("isnt", ["isn't"] * 10) == 1.0
    assert vqa_accuracy("Yes", ["yes"] * 10) == 1.0
    # as the official script: unanimous answers are compared as given (real annotations are
    # already normalised), so a raw number word there never matches a normalised prediction
    assert vqa_accuracy("seven", ["seven"] * 10) == 0.0
    with pytest.raises(ValueError):
        vqa_accuracy("yes", [])


# -- the official layout ---------------------------------------------------------------------
def _image(path, color, fmt="JPEG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 24), color).save(path, format=fmt)


def _answers(*pairs):
    """("yes", 8), ("no", 2) -> ten answer dicts."""
    texts = [t for t, k in pairs for _ in range(k)]
    assert len(texts) == 10
    return [{"answer": t, "answer_confidence": "yes", "answer_id": i + 1} for i, t in enumerate(texts)]


# val image ids that land in each half of the val split, whatever the hash says
VAL_NONMEMBER = next(i for i in range(100, 200) if val_half(i) == "nonmembers")
VAL_TEST = [i for i in range(100, 200) if val_half(i) == "test"][:2]


def write_vqav2(root):
    rows = {
        "train": [
            (1, 11, "What color is the bus?", _answers(("red", 9), ("maroon", 1)), "red", "other"),
            (1, 12, "Is the bus moving?", _answers(("yes", 7), ("no", 3)), "yes", "yes/no"),
            (2, 21, "How many dogs are there?", _answers(("2", 8), ("two", 2)), "2", "number"),
        ],
        "val": [
            (VAL_NONMEMBER, 31, "Is it raining?", _answers(("no", 10)), "no", "yes/no"),
            (VAL_TEST[0], 41, "How many cats?", _answers(("1", 6), ("one", 2), ("2", 2)), "1", "number"),
            (VAL_TEST[0], 42, "Is there a cat?", _answers(("yes", 2), ("no", 8)), "no", "yes/no"),
            (
                VAL_TEST[1],
                51,
                "What is on the table?",
                _answers(("cake", 5), ("a cake", 3), ("pie", 2)),
                "cake",
                "other",
            ),
        ],
    }
    for split, items in rows.items():
        questions = [{"image_id": i, "question": q, "question_id": qid} for i, qid, q, *_ in items]
        annotations = [
            {
                "question_id": qid,
                "image_id": i,
                "answers": a,
                "multiple_choice_answer": mc,
                "answer_type": t,
                "question_type": q.split()[0].lower(),
            }
            for i, qid, q, a, mc, t in items
        ]
        (root / f"v2_OpenEnded_mscoco_{split}2014_questions.json").write_text(json.dumps({"questions": questions}))
        (root / f"v2_mscoco_{split}2014_annotations.json").write_text(json.dumps({"annotations": annotations}))
        for k, image_id in enumerate(sorted({r[0] for r in items})):
            name = f"{split}2014/COCO_{split}2014_{image_id:012d}"
            # the real files are jpg; a png stands in as well
            _image(root / (name + (".png" if k == 1 else ".jpg")), (40 * k, 90, 200), "PNG" if k == 1 else "JPEG")
    return root


def test_prompt_is_lmms_eval_vqav2():
    assert (
        build_prompt("Is the bus moving?") == "Is the bus moving?\nAnswer the question using a single word or phrase."
    )


def test_official_layout_loads_with_image_disjoint_val_halves(tmp_path):
    data = VQAv2().load(str(write_vqav2(tmp_path)))
    assert [e.uid for e in data.train] == ["11", "12", "21"]
    assert [e.uid for e in data.nonmembers] == ["31"]
    assert [e.uid for e in data.test] == ["41", "42", "51"]
    e = data.test[0]
    assert e.target == "1" and len(e.references) == 10 and Counter(e.references)["one"] == 2
    assert e.prompt == build_prompt("How many cats?") and e.meta["answer_type"] == "number"
    assert data.test[0].group == data.test[1].group == str(VAL_TEST[0])
    assert data.train[2].image.suffix == ".png" and data.train[0].image.suffix == ".jpg"
    groups = [{e.group for e in part} for part in (data.train, data.nonmembers, data.test)]
    assert not groups[0] & groups[1] and not groups[0] & groups[2] and not groups[1] & groups[2]
    assert data.source == "local" and data.layout == "vqav2"
    assert all(e.ends_with_eos for part in (data.train, data.nonmembers, data.test) for e in part)  # answers stop


class ScriptedModel:
    """Answers from a table, as a model's `generate` would."""

    def __init__(self, answers):
        self.answers = answers

    def generate(self, examples, max_new_tokens):
        return [self.answers[e.uid] for e in examples]


def test_evaluate_scores_generated_answers_by_vqa_accuracy(tmp_path):
    data = VQAv2().load(str(write_vqav2(tmp_path)))
    model = ScriptedModel({"41": "One", "42": "Yes.", "51": "a cake"})
    metrics = VQAv2().evaluate(model, data.test)
    # "One" -> "1": 6 say "1" and 2 say "one" -> 8 match; "yes": 2 of 10; "a cake" -> "cake": 8 of 10
    expected = {"41": 1.0, "42": 0.6, "51": 1.0}
    assert metrics["accuracy"] == pytest.approx(sum(expected.values()) / 3)
    assert metrics["accuracy_number"] == 1.0 and metrics["accuracy_yes_no"] == pytest.approx(0.6)
    assert metrics["accuracy_other"] == 1.0


def test_evaluate_runs_the_real_generation_path(tmp_path, tiny_model):
    data = VQAv2().load(str(write_vqav2(tmp_path)))
    metrics = VQAv2().evaluate(tiny_model, data.test)
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert set(metrics) == {"accuracy", "accuracy_yes_no", "accuracy_number", "accuracy_other"}


def _lines_of(error) -> int:
    return len(str(error.value).splitlines())


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda r: (r / "v2_mscoco_train2014_annotations.json").write_text("{not json"), "not valid JSON"),
        (lambda r: (r / "v2_mscoco_val2014_annotations.json").unlink(), "has no v2_mscoco_val2014_annotations.json"),
        (lambda r: (r / "train2014" / "COCO_train2014_000000000001.jpg").unlink(), "missing image"),
        (
            lambda r: (r / "train2014" / "COCO_train2014_000000000001.jpg").write_bytes(b"\xff\xd8 cut"),
            "unreadable image",
        ),
        (
            lambda r: (r / "v2_OpenEnded_mscoco_train2014_questions.json").write_text('{"questions": [3]}'),
            "malformed question",
        ),
        (
            lambda r: (r / "v2_OpenEnded_mscoco_train2014_questions.json").write_text('{"qs": []}'),
            "not a VQAv2 questions",
        ),
        (lambda r: (r / "v2_mscoco_train2014_annotations.json").write_text('{"annotations": []}'), "has no annotation"),
        (
            lambda r: (r / "v2_mscoco_train2014_annotations.json").write_text('{"annotations": [{"image_id": 1}]}'),
            "not a VQAv2 annotations",
        ),
    ],
)
def test_bad_data_is_one_clear_line(tmp_path, damage, message):
    root = write_vqav2(tmp_path)
    damage(root)
    with pytest.raises(DpbenchError, match=message) as error:
        read_vqav2(root)
    assert _lines_of(error) == 1


def test_missing_dir(tmp_path):
    with pytest.raises(DpbenchError, match="does not exist"):
        read_vqav2(tmp_path / "nope")


# -- the embedded sample ---------------------------------------------------------------------
def test_embedded_sample_is_large_varied_disagreeing_and_image_disjoint(isolated_cache):
    root = vqa_embedded.build(isolated_cache / "vqa")
    anns = {
        s: json.loads((root / f"v2_mscoco_{s}2014_annotations.json").read_text())["annotations"]
        for s in ("train", "val")
    }
    qs = {
        s: json.loads((root / f"v2_OpenEnded_mscoco_{s}2014_questions.json").read_text())["questions"]
        for s in ("train", "val")
    }
    every = anns["train"] + anns["val"]
    assert len(every) >= 2000 and len(qs["train"]) + len(qs["val"]) == len(every)
    assert all(len(a["answers"]) == 10 for a in every)
    assert {a["answer_type"] for a in every} == {"yes/no", "number", "other"}
    assert len({q["question"].split(" than ")[0] for s in qs for q in qs[s]}) >= 5
    # annotators disagree now and then, in realistic ways (number words, misreadings)
    distinct = Counter(len({x["answer"] for x in a["answers"]}) for a in every)
    assert distinct[1] > len(every) / 10 and sum(n for k, n in distinct.items() if k >= 3) > len(every) / 10
    assert any(x["answer"] == "seven" for a in every for x in a["answers"])
    for a in every:  # the official field: the most frequent answer
        counts = Counter(x["answer"] for x in a["answers"])
        assert counts[a["multiple_choice_answer"]] == max(counts.values())
    images = {s: {a["image_id"] for a in anns[s]} for s in anns}
    assert not images["train"] & images["val"]
    from dpbench.tasks.digits import private_digits

    private = {d.index + 1 for d in private_digits()}
    assert images["train"] | images["val"] <= private  # never a public pre-training image
    data = VQAv2().load(None)
    assert data.source == "embedded-sample" and len(data.train) == len(anns["train"])
    groups = [{e.group for e in part} for part in (data.train, data.nonmembers, data.test)]
    assert not groups[0] & groups[1] and not groups[0] & groups[2] and not groups[1] & groups[2]
    assert min(len(data.nonmembers), len(data.test)) > len(anns["val"]) / 3
    assert all(e.image.exists() for e in data.test[:20])


# -- greedy generation through the wrapper ----------------------------------------------------
def test_generate_decodes_only_new_tokens_and_batches_like_single_examples(tmp_path, tiny_model):
    from dpbench.tasks.digits import private_digits

    examples = []
    for i, (d, prompt) in enumerate(
        zip(private_digits()[:3], ["Which digit?", "Is the number in the image even or odd?", "A"])
    ):
        d.image().save(tmp_path / f"{i}.png")
        examples.append(Example(uid=str(i), prompt=prompt, target="", image=tmp_path / f"{i}.png"))
    batch = tiny_model.generate(examples, max_new_tokens=5)
    assert len(batch) == 3 and all(isinstance(t, str) and t == t.strip() for t in batch)
    assert not any("<pad>" in t or "</s>" in t or "ASSISTANT" in t for t in batch)
    # left padding changes nothing: each example alone generates the same text
    assert batch == [tiny_model.generate([e], max_new_tokens=5)[0] for e in examples]
