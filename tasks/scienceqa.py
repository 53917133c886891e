"""ScienceQA-IMG: multiple-choice science questions that come with an image.

Reads the real dataset in both published layouts, or the embedded digit sample written in
layout (a) by `scienceqa_embedded`:
  (a) `problems.json` + `pid_splits.json` + `images/<split>/<pid>/image.png` (the original);
  (b) Hugging Face parquet files (`*train*.parquet`, `*val*.parquet`, `*test*.parquet`) with
      columns image, question, choices, answer, hint, ... (images are extracted once to disk).
The prompt is lmms-eval's ScienceQA-IMG prompt; accuracy picks the option letter of highest
likelihood, as lm-eval scores multiple choice.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np

from dpbench.cache import cache_dir
from dpbench.errors import DpbenchError
from dpbench.examples import Example
from dpbench.files import DATA_MAX_BYTES, check_file, read_json
from dpbench.tasks import scienceqa_embedded
from dpbench.tasks.base import TASKS, Task, TaskData
from dpbench.tasks.loading import check_image, read_dataset, require_examples

ENV_VAR = "DPBENCH_SCIENCEQA_DIR"
POST_PROMPT = "\nAnswer with the option's letter from the given choices directly."
SPLIT_NAMES = {"train": ("train",), "val": ("val", "validation"), "test": ("test",)}


def build_prompt(hint: str, question: str, choices: list[str]) -> str:
    context = f"Context: {hint}\n" if hint else ""
    options = "\n".join(f"{chr(ord('A') + i)}. {c}" for i, c in enumerate(choices))
    return f"{context}{question}\n{options}{POST_PROMPT}"


def check_problem(problem, where: str) -> None:
    """One record's fields and types, named by file and record, before any example is built."""
    if not isinstance(problem, dict):
        raise DpbenchError(f"{where}: a problem must be a mapping of its fields, got {type(problem).__name__}")
    for key in ("question", "choices", "answer"):
        if key not in problem:
            raise DpbenchError(f"{where}: no {key!r} field")
    if not isinstance(problem["question"], str):
        raise DpbenchError(f"{where}: question must be text, got {problem['question']!r}")
    choices = problem["choices"]
    if hasattr(choices, "tolist"):  # parquet rows may carry numpy arrays
        choices = choices.tolist()
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, (str, int, float)) for c in choices):
        raise DpbenchError(f"{where}: choices must be a list of at least two options, got {choices!r}")
    answer = problem["answer"]
    if isinstance(answer, bool) or not isinstance(answer, (int, np.integer)) or not 0 <= answer < len(choices):
        raise DpbenchError(f"{where}: answer must be an index into its {len(choices)} choices, got {answer!r}")
    if problem.get("hint") is not None and not isinstance(problem["hint"], str):
        raise DpbenchError(f"{where}: hint must be text or null, got {problem['hint']!r}")


def _example(uid: str, problem: dict, image: Path, group: str) -> Example:
    choices = [str(c) for c in problem["choices"]]
    answer = int(problem["answer"])
    letters = tuple(chr(ord("A") + i) for i in range(len(choices)))
    return Example(
        uid=uid,
        prompt=build_prompt(problem.get("hint") or "", problem["question"], choices),
        target=letters[answer],
        image=image,
        choices=letters,
        answer=answer,
        group=group,
        meta={
            "subject": problem.get("subject"),
            "topic": problem.get("topic"),
            "grade": problem.get("grade"),
            "source_image": problem.get("source_image"),  # the embedded sample's digit: its concept
        },
    )


def _file_digest(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()[:16]


def read_layout_a(root: Path) -> dict[str, list[Example]]:
    problems = read_json(root / "problems.json", limit=DATA_MAX_BYTES)
    pid_splits = read_json(root / "pid_splits.json", limit=DATA_MAX_BYTES)
    if not isinstance(problems, dict):
        raise DpbenchError(
            f"{root / 'problems.json'} must map problem ids to problems, got a {type(problems).__name__}"
        )
    if not isinstance(pid_splits, dict) or not all(isinstance(v, list) for v in pid_splits.values()):
        raise DpbenchError(f"{root / 'pid_splits.json'} must map split names to lists of problem ids")
    out: dict[str, list[Example]] = {}
    for split, aliases in SPLIT_NAMES.items():
        pids = next((pid_splits[a] for a in aliases if a in pid_splits), None)
        if pids is None:
            raise DpbenchError(f"{root / 'pid_splits.json'} has no {split!r} split")
        examples = []
        for pid in pids:
            p = problems.get(str(pid))
            if p is None:
                raise DpbenchError(f"{root}: pid {pid} of split {split} is missing from problems.json")
            check_problem(p, f"{root / 'problems.json'}: problem {pid}")
            if p.get("image") is not None and not isinstance(p["image"], str):
                raise DpbenchError(f"{root / 'problems.json'}: problem {pid}: image must be a file name or null")
            if not p.get("image"):
                continue  # ScienceQA-IMG keeps only the problems that have an image
            image = root / "images" / str(pid) / p["image"]
            if not image.exists():
                image = root / "images" / split / str(pid) / p["image"]
            if not image.exists():
                raise DpbenchError(f"missing image for problem {pid}: expected {image}")
            check_image(image)
            examples.append(_example(str(pid), p, image, group=_file_digest(image)))
        out[split] = examples
    return out


def read_layout_b(root: Path) -> dict[str, list[Example]]:
    import pyarrow.parquet as pq

    files = sorted(root.rglob("*.parquet"))
    out: dict[str, list[Example]] = {}
    for split, aliases in SPLIT_NAMES.items():
        chosen = [f for f in files if any(a in f.name for a in aliases)]
        if split == "train":  # "train" must not also match e.g. "minitrain"-free names only
            chosen = [f for f in chosen if "val" not in f.name and "test" not in f.name]
        if not chosen:
            raise DpbenchError(f"{root}: no parquet file for the {split!r} split (names must contain one of {aliases})")
        examples = []
        for f in chosen:
            check_file(f)  # a regular file, under the size cap
            try:
                rows = pq.read_table(f).to_pylist()
            except Exception as e:  # pyarrow raises several types for a corrupt file
                raise DpbenchError(f"cannot read parquet file {f}: {e}") from None
            image_dir = cache_dir() / "scienceqa-parquet" / hashlib.sha1(str(f.resolve()).encode()).hexdigest()[:12]
            image_dir.mkdir(parents=True, exist_ok=True)
            for i, row in enumerate(rows):
                img = row.get("image")
                if not img:
                    continue
                check_problem(row, f"{f}: row {i}")
                data = img.get("bytes") if isinstance(img, dict) else img
                if not isinstance(data, (bytes, bytearray)):
                    raise DpbenchError(f"{f}: row {i}: image holds no encoded bytes")
                digest = hashlib.sha1(data).hexdigest()[:16]
                path = image_dir / f"{digest}.png"
                if not path.exists():
                    from PIL import Image

                    try:
                        Image.open(io.BytesIO(data)).convert("RGB").save(path)
                    except OSError as e:
                        raise DpbenchError(f"{f}: row {i} has an unreadable image: {e}") from None
                examples.append(_example(f"{f.stem}-{i}", row, path, group=digest))
        out[split] = examples
    return out


def read_scienceqa(root: Path) -> tuple[dict[str, list[Example]], str]:
    if not root.is_dir():
        raise DpbenchError(f"ScienceQA data dir {root} does not exist")
    if (root / "problems.json").exists():
        return read_layout_a(root), "problems.json"
    if any(root.rglob("*.parquet")):
        return read_layout_b(root), "parquet"
    raise DpbenchError(
        f"{root} holds neither problems.json + pid_splits.json nor parquet files; "
        "point --data-dir at a ScienceQA folder"
    )


@TASKS.register("scienceqa")
class ScienceQA(Task):
    """ScienceQA-IMG multiple choice (accuracy); --data-dir: problems.json + pid_splits.json, or parquet."""

    primary_metric = "accuracy"

    def load(self, data_dir: str | None) -> TaskData:
        (splits, layout), source, path = read_dataset(
            data_dir,
            ENV_VAR,
            read_scienceqa,
            lambda: scienceqa_embedded.build(cache_dir() / f"scienceqa-embedded-v{scienceqa_embedded.FORMAT_VERSION}"),
            "ScienceQA",
        )
        train_groups = {e.group for e in splits["train"]}
        # an image seen in training would make a "non-member" a member in all but name
        nonmembers = [e for e in splits["val"] if e.group not in train_groups]
        require_examples(
            {"ScienceQA train": splits["train"], "ScienceQA test": splits["test"]}, "problem with an image"
        )
        return TaskData(splits["train"], nonmembers, splits["test"], source, path, layout)

    def evaluate(self, model, examples: list[Example], batch_size: int = 64) -> dict[str, float]:
        correct = []
        for i in range(0, len(examples), batch_size):
            chunk = examples[i : i + batch_size]
            for e, scores in zip(chunk, model.choice_loglikelihoods(chunk)):
                correct.append(int(np.argmax(scores)) == e.answer)
        return {"accuracy": float(np.mean(correct)) if correct else 0.0, **breakdown(examples, correct)}


# ScienceQA's paper reports accuracy by subject and by grade band; results keep the same columns.
SUBJECTS = {"natural science": "NAT", "social science": "SOC", "language science": "LAN"}


def grade_band(grade: object) -> str | None:
    """ScienceQA's grade bands: grade3 -> G1-6, grade10 -> G7-12; anything else has none."""
    digits = str(grade or "").removeprefix("grade")
    if not digits.isdigit() or not 1 <= int(digits) <= 12:
        return None
    return "G1-6" if int(digits) <= 6 else "G7-12"


def breakdown(examples: list[Example], correct: list[bool]) -> dict[str, float]:
    """accuracy_<NAT|SOC|LAN|G1-6|G7-12> over the examples of each group present (absent: no key)."""
    groups: dict[str, list[bool]] = {}
    for e, ok in zip(examples, correct):
        for key in (SUBJECTS.get(e.meta.get("subject")), grade_band(e.meta.get("grade"))):
            if key is not None:
                groups.setdefault(f"accuracy_{key}", []).append(ok)
    return {k: float(np.mean(v)) for k, v in sorted(groups.items())}
