"""Docs for the `scienceqa_img_dpbench` lm-eval task, read through dpbench's own ScienceQA loader.

Going through `ScienceQA().load` (not a second reader) is what makes lm-eval see exactly the
examples dpbench evaluates: the same image-only test split, prompts, option letters and answers,
from either published layout or the embedded sample. lm-eval imports this file by path.
"""

from __future__ import annotations

from pathlib import Path


def load(data_dir: str | None = None, **_metadata) -> dict:
    """{"test": docs}. The data folder: `data_dir` (--metadata or dataset_kwargs), else
    $DPBENCH_SCIENCEQA_DIR, else the embedded sample. lm-eval also passes the task's metadata
    and the model args as keywords; they are not about the data."""
    import datasets

    from dpbench.tasks.scienceqa import ScienceQA

    test = ScienceQA().load(data_dir).test
    return {"test": datasets.Dataset.from_list([_doc(e) for e in test])}


def _doc(example) -> dict:
    # the image travels as a path: a doc stays small and JSON-loggable, and `doc_to_image`
    # decodes it the way dpbench does
    return {
        "uid": example.uid,
        "prompt": example.prompt,
        "choices": list(example.choices),
        "answer": example.answer,
        "image": str(example.image),
        "subject": example.meta.get("subject") or "",
        "grade": example.meta.get("grade") or "",
    }


def doc_to_image(doc: dict) -> list:
    """The problem's image as lm-eval's multimodal models expect it: a list of RGB PIL images."""
    from dpbench.models.base import load_image

    return [load_image(Path(doc["image"]))]
