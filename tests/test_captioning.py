"""COCO captions: the official layout (fixtures written here), pycocoevalcap's metrics (equal to
its own COCOEvalCap), SPICE reported as unavailable, the embedded sample, bad data."""

import json

import pytest
from PIL import Image

from dpbench.errors import DpbenchError
from dpbench.tasks import caption_metrics, captioning_embedded
from dpbench.tasks.caption_metrics import METRICS, caption_scores
from dpbench.tasks.captioning import PROMPT, COCOCaptions, read_coco_captions
from dpbench.tasks.coco import val_half

VAL_NONMEMBER = next(i for i in range(100, 200) if val_half(i) == "nonmembers")
VAL_TEST = [i for i in range(100, 200) if val_half(i) == "test"][:2]


def write_coco_captions(root):
    splits = {
        # image 1's captions are listed out of id order: its target is the lowest id's caption
        "train": {
            1: [(12, "Two dogs play in the snow."), (11, "A pair of dogs playing outside in snow.")],
            2: [(21, "A red bus parked by the road."), (22, "a bus on a street")],
            3: [],
        },  # an image nobody captioned
        "val": {
            VAL_NONMEMBER: [(31, "A cat sleeping on a sofa."), (32, "A sleeping cat.")],
            VAL_TEST[0]: [
                (41, "A man riding a wave on a surfboard."),
                (42, "A surfer rides a big wave."),
                (43, "Person surfing in the ocean."),
            ],
            VAL_TEST[1]: [(51, "A plate of food with broccoli."), (52, "Broccoli and rice on a white plate.")],
        },
    }
    for split, images in splits.items():
        rows, anns = [], []
        for k, (image_id, caps) in enumerate(images.items()):
            stem = f"COCO_{split}2014_{image_id:012d}"
            rows.append({"id": image_id, "file_name": stem + ".jpg", "height": 24, "width": 24})
            anns += [{"image_id": image_id, "id": i, "caption": c} for i, c in caps]
            path = root / f"{split}2014" / (stem + (".png" if k == 1 else ".jpg"))  # a png may stand in
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (24, 24), (50 * k, 120, 30)).save(path)
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"captions_{split}2014.json").write_text(
            json.dumps({"images": rows, "annotations": anns})
        )
    return root


def test_official_layout_loads_one_example_per_image(tmp_path):
    data = COCOCaptions().load(str(write_coco_captions(tmp_path)))
    assert [e.uid for e in data.train] == ["1", "2"]
    assert [e.uid for e in data.nonmembers] == [str(VAL_NONMEMBER)]
    assert [e.uid for e in data.test] == [str(i) for i in VAL_TEST]
    first = data.train[0]
    assert first.target == "A pair of dogs playing outside in snow."
    assert first.references == ("A pair of dogs playing outside in snow.", "Two dogs play in the snow.")
    assert first.prompt == PROMPT == "Provide a one-sentence caption for the provided image."
    assert data.train[1].image.suffix == ".png" and first.image.suffix == ".jpg"
    assert data.source == "local" and data.layout == "coco-captions"
    assert all(e.ends_with_eos for part in (data.train, data.nonmembers, data.test) for e in part)  # captions stop


def _cocoevalcap(monkeypatch, predictions, references):
    """pycocoevalcap's own evaluation on a tiny COCO object + results (SPICE stubbed out: it
    downloads CoreNLP; METEOR shares our already running JVM, to save its start-up)."""
    import pycocoevalcap.eval as coco_eval
    from pycocotools.coco import COCO

    class NoSpice:
        def compute_score(self, gts, res):
            return 0.0, [0.0] * len(gts)

        def method(self):
            return "SPICE"

    monkeypatch.setattr(coco_eval, "Spice", NoSpice)
    monkeypatch.setattr(coco_eval, "Meteor", caption_metrics.meteor)
    coco = COCO()
    coco.dataset = {
        "images": [{"id": i} for i in range(len(references))],
        "annotations": [
            {"image_id": i, "id": 100 * i + k, "caption": c}
            for i, refs in enumerate(references)
            for k, c in enumerate(refs)
        ],
    }
    coco.createIndex()
    results = coco.loadRes([{"image_id": i, "caption": p} for i, p in enumerate(predictions)])
    evaluator = coco_eval.COCOEvalCap(coco, results)
    evaluator.evaluate()
    return evaluator.eval


def test_caption_metrics_equal_cocoevalcap(monkeypatch):
    references = [
        ["A man riding a wave on top of a surfboard.", "A surfer rides a large wave.", "Person surfing in the ocean."],
        ["A plate of food with broccoli and rice.", "Broccoli, rice and chicken on a white plate."],
        ["Two dogs play in the snow.", "A pair of dogs playing outside in the snow!"],
        ["A red double-decker bus on a city street.", "a bus parked by the road"],
    ]
    predictions = ["A man surfing a big wave.", "a plate of broccoli and rice", "Two cats on a sofa.", ""]
    ours = caption_scores(predictions, references)
    theirs = _cocoevalcap(monkeypatch, predictions, references)
    assert set(ours) == set(METRICS)
    for metric in METRICS:
        assert ours[metric] == pytest.approx(theirs[metric], rel=1e-9, abs=1e-12), metric
    assert 0 < ours["CIDEr"] and 0 < ours["Bleu_1"] < 1


def test_spice_is_unavailable_never_zero(tmp_path):
    task = COCOCaptions()
    assert task.primary_metric == "CIDEr"
    assert task.unavailable_metrics() == {"SPICE": "needs Stanford CoreNLP downloaded at run time"}

    class Echo:  # "generates" each image's first reference
        def generate(self, examples, max_new_tokens):
            return [e.references[0] for e in examples]

    data = task.load(str(write_coco_captions(tmp_path)))
    metrics = task.evaluate(Echo(), data.test)
    assert set(metrics) == set(METRICS) and "SPICE" not in metrics
    assert metrics == caption_scores([e.references[0] for e in data.test], [e.references for e in data.test])


def test_evaluate_runs_the_real_generation_path(tmp_path, tiny_model, monkeypatch):
    from dpbench.tasks import captioning

    monkeypatch.setattr(captioning, "MAX_NEW_TOKENS", 8)  # a random model never stops by itself
    data = COCOCaptions().load(str(write_coco_captions(tmp_path)))
    metrics = COCOCaptions().evaluate(tiny_model, data.test)  # a random model's odd bytes included
    assert set(metrics) == set(METRICS) and all(v >= 0 for v in metrics.values())


def test_missing_java_is_one_clear_error(tmp_path, monkeypatch):
    root = write_coco_captions(tmp_path)
    monkeypatch.setattr(caption_metrics.shutil, "which", lambda name: None)
    message = "captioning needs Java 17 for pycocoevalcap's tokenizer and METEOR; install openjdk-17-jre"
    with pytest.raises(DpbenchError) as error:
        COCOCaptions().load(str(root))  # before any training
    assert str(error.value) == message
    with pytest.raises(DpbenchError, match="needs Java 17"):
        caption_scores(["a dog"], [["a dog running"]])


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda r: (r / "annotations" / "captions_val2014.json").write_text("[{"), "not valid JSON"),
        (lambda r: (r / "annotations" / "captions_train2014.json").unlink(), "no annotations/captions_train2014.json"),
        (lambda r: (r / "train2014" / "COCO_train2014_000000000001.jpg").unlink(), "missing image"),
        (
            lambda r: (r / "annotations" / "captions_train2014.json").write_text('{"images": []}'),
            "not in the COCO captions layout",
        ),
        (
            lambda r: (r / "annotations" / "captions_train2014.json").write_text(
                '{"images": [], "annotations": [{"image_id": 7, "id": 1, "caption": "x"}]}'
            ),
            "not in its images list",
        ),
    ],
)
def test_bad_data_is_one_clear_line(tmp_path, damage, message):
    root = write_coco_captions(tmp_path)
    damage(root)
    with pytest.raises(DpbenchError, match=message) as error:
        read_coco_captions(root)
    assert len(str(error.value).splitlines()) == 1
    with pytest.raises(DpbenchError, match="does not exist"):
        read_coco_captions(tmp_path / "nope")


def test_embedded_sample_has_varied_captions_and_image_disjoint_splits(isolated_cache):
    root = captioning_embedded.build(isolated_cache / "cap")
    files = {s: json.loads((root / "annotations" / f"captions_{s}2014.json").read_text()) for s in ("train", "val")}
    images = {s: {im["id"] for im in f["images"]} for s, f in files.items()}
    assert not images["train"] & images["val"]
    from dpbench.tasks.digits import private_digits

    assert images["train"] | images["val"] <= {d.index + 1 for d in private_digits()}  # private pool only
    captions = [a["caption"] for f in files.values() for a in f["annotations"]]
    assert len(captions) == 5 * (len(images["train"]) + len(images["val"]))
    sevens = {c.replace("seven", "#").replace("7", "#") for c in captions if "seven" in c or "7" in c}
    assert len(sevens) == len(captioning_embedded.TEMPLATES) >= 8  # varied wording, word or numeral
    assert any(c[0].isupper() and c.endswith(".") for c in captions)
    data = COCOCaptions().load(None)
    assert data.source == "embedded-sample" and len(data.train) == len(images["train"])
    assert all(len(e.references) == 5 and e.target == e.references[0] for e in data.train)
    groups = [{e.group for e in part} for part in (data.train, data.nonmembers, data.test)]
    assert not groups[0] & groups[1] and not groups[0] & groups[2] and not groups[1] & groups[2]
    assert min(len(data.nonmembers), len(data.test)) > len(images["val"]) / 3
