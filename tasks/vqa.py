"""VQAv2: open-ended questions about COCO images, scored by the standard VQA accuracy.

Reads the official layout (the embedded digit sample of `vqa_embedded` is written in it too):
  v2_OpenEnded_mscoco_{split}2014_questions.json   {"questions": [{image_id, question, question_id}]}
  v2_mscoco_{split}2014_annotations.json           {"annotations": [{question_id, image_id,
                                                     answers: [{answer, ...} x 10], multiple_choice_answer,
                                                     answer_type, question_type}]}
  {split}2014/COCO_{split}2014_{image_id:012d}.jpg (or .png; also under images/)
for split = train (what methods train on) and val. The json files may sit in data_dir or one
folder below it. test2015 has no public answers and is not read.

Splits: train2014 -> train. val2014 -> two image-disjoint halves by image id: an image goes
to the audit's non-members when the first byte of sha256(str(image_id)) is even, else to
test. The rule looks at one id at a time, so an image stays in its half whatever subset of
val2014 is present. Every question about an image lands where its image does.

Example.target is the annotation's `multiple_choice_answer` (what methods train on and the
attacks score); Example.references are the 10 human answers. The prompt is lmms-eval's
vqav2 prompt; answers are generated greedily (16 new tokens at most, as lmms-eval).
"""

from __future__ import annotations

from pathlib import Path
from statistics import mean

from dpbench.cache import cache_dir
from dpbench.errors import DpbenchError
from dpbench.examples import Example
from dpbench.files import DATA_MAX_BYTES, read_json
from dpbench.tasks import vqa_embedded
from dpbench.tasks.base import TASKS, Task, TaskData
from dpbench.tasks.coco import coco_file_name, coco_image, find_file, split_val
from dpbench.tasks.loading import generate_all, read_dataset, require_examples
from dpbench.tasks.vqa_metrics import vqa_accuracy

ENV_VAR = "DPBENCH_VQA_DIR"
POST_PROMPT = "\nAnswer the question using a single word or phrase."
MAX_NEW_TOKENS = 16
SPLITS = ("train", "val")
ANSWER_TYPES = {"yes/no": "accuracy_yes_no", "number": "accuracy_number", "other": "accuracy_other"}


def build_prompt(question: str) -> str:
    return f"{question}{POST_PROMPT}"


# -- VQAv2 ---------------------------------------------------------------------------------
def read_vqav2_split(root: Path, split: str) -> list[Example]:
    q_path = find_file(root, f"v2_OpenEnded_mscoco_{split}2014_questions.json")
    a_path = find_file(root, f"v2_mscoco_{split}2014_annotations.json")
    questions, annotations = read_json(q_path, limit=DATA_MAX_BYTES), read_json(a_path, limit=DATA_MAX_BYTES)
    try:
        by_qid = {a["question_id"]: a for a in annotations["annotations"]}
    except (KeyError, TypeError) as e:
        raise DpbenchError(f"{a_path} is not a VQAv2 annotations file (no {e})") from None
    if not isinstance(questions, dict) or not isinstance(questions.get("questions"), list):
        raise DpbenchError(f"{q_path} is not a VQAv2 questions file (no 'questions' list)")
    questions = questions["questions"]
    images: dict[int, Path] = {}
    examples = []
    for q in questions:
        try:
            qid, image_id = q["question_id"], int(q["image_id"])
            ann = by_qid.get(qid)
            if ann is None:
                raise DpbenchError(f"question {qid} of {q_path.name} has no annotation in {a_path.name}")
            answers = tuple(str(a["answer"]) for a in ann["answers"])
            target = str(ann["multiple_choice_answer"])
            prompt = build_prompt(q["question"])
        except KeyError as e:
            raise DpbenchError(f"{q_path.name}/{a_path.name}: a question or its annotation lacks {e}") from None
        except (TypeError, ValueError) as e:
            raise DpbenchError(f"{q_path.name}/{a_path.name}: a malformed question or annotation ({e})") from None
        if not answers:
            raise DpbenchError(f"question {qid} of {a_path.name} has no human answers")
        if image_id not in images:
            images[image_id] = coco_image(root, split, coco_file_name(split, image_id))
        examples.append(
            Example(
                uid=str(qid),
                prompt=prompt,
                target=target,
                image=images[image_id],
                group=str(image_id),
                references=answers,
                ends_with_eos=True,
                meta={"answer_type": ann.get("answer_type"), "question_type": ann.get("question_type")},
            )
        )
    return examples


def read_vqav2(root: Path) -> dict[str, list[Example]]:
    if not root.is_dir():
        raise DpbenchError(f"VQAv2 data dir {root} does not exist")
    return {split: read_vqav2_split(root, split) for split in SPLITS}


@TASKS.register("vqa")
class VQAv2(Task):
    """VQAv2 open-ended answers (VQA accuracy); --data-dir: the official questions/annotations JSON layout."""

    primary_metric = "accuracy"

    def load(self, data_dir: str | None) -> TaskData:
        splits, source, path = read_dataset(
            data_dir,
            ENV_VAR,
            read_vqav2,
            lambda: vqa_embedded.build(cache_dir() / f"vqa-embedded-v{vqa_embedded.FORMAT_VERSION}"),
            "VQAv2",
        )
        nonmembers, test = split_val(splits["train"], splits["val"])
        require_examples({"VQAv2 train": splits["train"], "VQAv2 test (half of val)": test}, "question")
        return TaskData(splits["train"], nonmembers, test, source, path, "vqav2")

    def evaluate(self, model, examples: list[Example], batch_size: int = 64) -> dict[str, float]:
        predictions = generate_all(model, examples, batch_size, MAX_NEW_TOKENS)
        scores = [vqa_accuracy(p, e.references) for p, e in zip(predictions, examples)]
        metrics = {"accuracy": mean(scores) if scores else 0.0}
        for answer_type, key in ANSWER_TYPES.items():  # as the official evaluation reports them
            typed = [s for s, e in zip(scores, examples) if e.meta.get("answer_type") == answer_type]
            if typed:
                metrics[key] = mean(typed)
        return metrics
