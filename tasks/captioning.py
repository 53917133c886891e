"""COCO Captions: describe an image in one sentence; scored by pycocoevalcap (CIDEr first).

Reads the COCO 2014 captions layout (the embedded digit sample of `captioning_embedded` is
written in it too):
  annotations/captions_{split}2014.json   {"images": [{id, file_name, ...}],
                                           "annotations": [{image_id, id, caption}]}
  {split}2014/{file_name}                 (or images/{split}2014/; a .png may stand in for a .jpg)
for split = train and val; the json may also sit in data_dir itself.

One example per image. Example.target is the image's first caption (lowest annotation id,
so it does not depend on file order): training sees each image once, with one caption, so
the privacy unit (one example) is one image. Example.references are all of its captions
(the first included), as COCOEvalCap scores them. train2014 -> train; val2014 is halved by
image id into non-members and test exactly as VQAv2's val (`coco.val_half`).

The prompt is lmms-eval's COCO caption prompt; captions are generated greedily (64 new
tokens at most, as lmms-eval).
"""

from __future__ import annotations

from pathlib import Path

from dpbench.cache import cache_dir
from dpbench.errors import DpbenchError
from dpbench.examples import Example
from dpbench.files import DATA_MAX_BYTES, read_json
from dpbench.tasks import captioning_embedded
from dpbench.tasks.base import TASKS, Task, TaskData
from dpbench.tasks.caption_metrics import UNAVAILABLE, caption_scores, check_environment
from dpbench.tasks.coco import coco_image, find_file, split_val
from dpbench.tasks.loading import generate_all, read_dataset, require_examples

ENV_VAR = "DPBENCH_COCO_DIR"
PROMPT = "Provide a one-sentence caption for the provided image."
MAX_NEW_TOKENS = 64
SPLITS = ("train", "val")


def _annotation_file(root: Path, split: str) -> Path:
    name = f"captions_{split}2014.json"
    if (root / "annotations" / name).is_file():
        return root / "annotations" / name
    try:
        return find_file(root, name)
    except DpbenchError:
        raise DpbenchError(f"{root} has no annotations/{name}") from None


def read_captions_split(root: Path, split: str) -> list[Example]:
    path = _annotation_file(root, split)
    data = read_json(path, limit=DATA_MAX_BYTES)
    try:
        images = {int(im["id"]): str(im["file_name"]) for im in data["images"]}
        captions: dict[int, list[tuple[int, str]]] = {}
        for a in data["annotations"]:
            image_id = int(a["image_id"])
            if image_id not in images:
                raise DpbenchError(f"{path}: caption {a['id']} is of image {image_id}, which is not in its images list")
            captions.setdefault(image_id, []).append((int(a["id"]), str(a["caption"]).strip()))
    except (KeyError, TypeError, ValueError) as e:
        raise DpbenchError(f"{path} is not in the COCO captions layout (an entry lacks {e})") from None
    examples = []
    for image_id, file_name in images.items():
        if image_id not in captions:
            continue  # an image nobody captioned scores nothing
        texts = tuple(c for _, c in sorted(captions[image_id]))
        examples.append(
            Example(
                uid=str(image_id),
                prompt=PROMPT,
                target=texts[0],
                image=coco_image(root, split, file_name),
                group=str(image_id),
                references=texts,
                ends_with_eos=True,
            )
        )
    return examples


def read_coco_captions(root: Path) -> dict[str, list[Example]]:
    if not root.is_dir():
        raise DpbenchError(f"COCO captions data dir {root} does not exist")
    return {split: read_captions_split(root, split) for split in SPLITS}


@TASKS.register("captioning")
class COCOCaptions(Task):
    """COCO captioning (CIDEr, BLEU-4, METEOR, ROUGE-L via pycocoevalcap; needs Java); --data-dir: COCO layout."""

    primary_metric = "CIDEr"

    def load(self, data_dir: str | None) -> TaskData:
        check_environment()  # before any training: scoring needs Java
        splits, source, path = read_dataset(
            data_dir,
            ENV_VAR,
            read_coco_captions,
            lambda: captioning_embedded.build(
                cache_dir() / f"captioning-embedded-v{captioning_embedded.FORMAT_VERSION}"
            ),
            "COCO Captions",
        )
        nonmembers, test = split_val(splits["train"], splits["val"])
        require_examples(
            {"COCO captions train": splits["train"], "COCO captions test (half of val)": test}, "captioned image"
        )
        return TaskData(splits["train"], nonmembers, test, source, path, "coco-captions")

    def evaluate(self, model, examples: list[Example], batch_size: int = 64) -> dict[str, float]:
        predictions = generate_all(model, examples, batch_size, MAX_NEW_TOKENS)
        return caption_scores(predictions, [e.references for e in examples])

    def unavailable_metrics(self) -> dict[str, str]:
        return dict(UNAVAILABLE)
