"""lm-eval interop: a finished ScienceQA run scored through `lm_eval.simple_evaluate` with the
`dpbench` model type equals dpbench's own evaluation, example by example."""

import json
import os
from dataclasses import replace

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # read at import by datasets / huggingface_hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lm_eval  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from dpbench import phases  # noqa: E402
from dpbench.errors import DpbenchError  # noqa: E402
from dpbench.lm_eval_model import TASK_DIR, DpbenchLM  # noqa: E402
from dpbench.models.base import ModelInfo, load_image  # noqa: E402
from dpbench.models.loading import load_hf  # noqa: E402
from dpbench.models.pruning_spec import TokenPruning  # noqa: E402
from dpbench.runner import run  # noqa: E402
from dpbench.spec import RunSpec, TrainingSpec  # noqa: E402
from dpbench.tasks.base import Example  # noqa: E402
from dpbench.tasks.digits import WORDS, private_digits  # noqa: E402
from dpbench.tasks.scienceqa import ScienceQA  # noqa: E402

TASK = "scienceqa_img_dpbench"
PRUNING = TokenPruning("random", 0.5)  # dualpriv's default visual-token pruning, written out


def write_scienceqa(root, n_test=20):
    """ScienceQA layout (a) with digit images: a few train/val problems, `n_test` test problems
    with an image (2-4 options, some with a hint) and one without (not ScienceQA-IMG)."""
    problems, splits = {}, {"train": [], "val": [], "test": []}
    plan = ["train"] * 4 + ["val"] * 2 + ["test"] * n_test
    for i, (split, d) in enumerate(zip(plan, private_digits())):
        n = 2 + i % 3
        choices = [(d.label + k) % 10 for k in range(n)][i % n :] + [(d.label + k) % 10 for k in range(n)][: i % n]
        pid = str(i + 1)
        problems[pid] = {
            "question": "Which digit is shown in the image?",
            "choices": [str(c) for c in choices],
            "answer": choices.index(d.label),
            "hint": "Look at the shape." if i % 2 else "",
            "image": "image.png",
            "split": split,
        }
        (root / "images" / split / pid).mkdir(parents=True)
        d.image().save(root / "images" / split / pid / "image.png")
        splits[split].append(pid)
    problems["999"] = {
        "question": "What is 2 + 2?",
        "choices": ["3", "4"],
        "answer": 1,
        "hint": "",
        "image": None,
        "split": "test",
    }
    splits["test"].append("999")
    (root / "problems.json").write_text(json.dumps(problems))
    (root / "pid_splits.json").write_text(json.dumps(splits))
    return root


@pytest.fixture(scope="module")
def finished_run(tiny_model, tmp_path_factory):
    """A real `dpbench run --save-checkpoint` (2 dualpriv steps) of the tiny random LLaVA."""
    tmp = tmp_path_factory.mktemp("lm-eval")
    base = tmp / "base"
    tiny_model.model.save_pretrained(base)
    tiny_model.processor.save_pretrained(base)
    data = write_scienceqa(tmp / "scienceqa")
    spec = RunSpec(
        task="scienceqa",
        method="dualpriv",
        model=str(base),
        data_dir=str(data),
        token_pruning=PRUNING,
        training=TrainingSpec(steps=2, batch_size=4, physical_batch_size=4, lr=1e-2),
        attacks=(),
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DPBENCH_CACHE", str(tmp / "cache"))
        result = run(spec, tmp / "runs", audit=False, save_checkpoint=True, log=lambda *_: None).to_dict()
    return tmp / "runs" / result["run_id"], data, result


@pytest.fixture
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DPBENCH_CACHE", str(tmp_path / "cache"))


@pytest.mark.slow
def test_lm_eval_accuracy_equals_dpbench_per_example(finished_run, offline, monkeypatch):
    run_dir, data_dir, result = finished_run
    monkeypatch.setenv("DPBENCH_SCIENCEQA_DIR", str(data_dir))
    out = lm_eval.simple_evaluate(
        model="dpbench",
        model_args=f"run_dir={run_dir}",
        tasks=[TASK],
        device="cpu",
        task_manager=TaskManager(include_path=TASK_DIR, include_defaults=False),
        log_samples=True,
    )
    samples = sorted(out["samples"][TASK], key=lambda s: s["doc_id"])
    lm_scores = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]

    # dpbench's own evaluation: the same examples through dpbench's loader, the checkpoint with the run's pruning
    test = ScienceQA().load(str(data_dir)).test
    assert [s["doc"]["uid"] for s in samples] == [e.uid for e in test] and len(test) == 20  # image problems only
    model = load_hf(run_dir / "checkpoint", "cpu", ModelInfo("run", "local", None, "llava"))
    spec = RunSpec.from_dict(json.loads((run_dir / "spec.json").read_text()))
    phases.adapt(model, spec, phases.make_method(spec))
    assert spec.token_pruning == PRUNING
    assert model.visual_tokens_kept < model.visual_tokens_per_image
    ours = model.choice_loglikelihoods(test)

    for e, lm, mine in zip(test, lm_scores, ours):
        assert len(lm) == len(e.choices)
        assert int(np.argmax(lm)) == int(np.argmax(mine)), e.uid
        np.testing.assert_allclose(lm, mine, atol=1e-4, err_msg=e.uid)
    accuracy = result["utility"]["metrics"]["accuracy"]  # what the run itself reported
    assert out["results"][TASK]["acc,none"] == pytest.approx(accuracy)
    assert ScienceQA().evaluate(model, test)["accuracy"] == pytest.approx(accuracy)

    # the pruning reinstall is what makes them equal: the checkpoint alone scores otherwise
    unpruned = load_hf(run_dir / "checkpoint", "cpu", ModelInfo("run", "local", None, "llava"))
    assert not np.allclose(np.concatenate(lm_scores), np.concatenate(unpruned.choice_loglikelihoods(test)), atol=1e-4)


@pytest.mark.slow
def test_multi_token_continuations_and_generation_match_dpbench(finished_run, tiny_model, offline):
    """Requests built by hand, as lm-eval builds them: (context, continuation, {"visual": [PIL image]})."""
    run_dir = finished_run[0]
    lm = DpbenchLM(pretrained=str(run_dir / "checkpoint"), device="cpu", batch_size=3)
    test = ScienceQA().load(str(finished_run[1])).test[:5]
    examples = [Example(e.uid, e.prompt, "", e.image, choices=tuple(WORDS[:3]) + (" seven eight",)) for e in test]
    requests = [
        Instance("loglikelihood", {}, (e.prompt, c, {"visual": [load_image(e.image)]}), i)
        for e in examples
        for i, c in enumerate(e.choices)
    ]
    got = lm.loglikelihood(requests, disable_tqdm=True)
    want = lm.vlm.choice_loglikelihoods(examples)
    np.testing.assert_allclose([ll for ll, _ in got], np.concatenate(want), atol=1e-4)
    # greedy flags: the model's own next token is greedy, any other choice is not
    batch = tiny_model.encode(examples)
    with torch.no_grad():
        top = tiny_model.model(**{k: v for k, v in batch.items() if k != "labels"}).logits[:, -1].argmax(-1).tolist()
    checked = 0
    for e, t in zip(examples, top):
        text = tiny_model.tokenizer.decode([t])
        if text == "A" or tiny_model._target_ids(text) != [t]:  # not a clean round trip: no test case
            continue
        (ll_top, greedy_top), (ll_a, greedy_a) = tiny_model.choice_scores([replace(e, choices=(text, "A"))])[0]
        assert greedy_top and not greedy_a and ll_top > ll_a
        checked += 1
    assert checked

    gen = [
        Instance(
            "generate_until",
            {},
            (e.prompt, {"until": ["\n\n"], "max_gen_toks": 4}, {"visual": [load_image(e.image)]}),
            0,
        )
        for e in test[:2]
    ]
    assert lm.generate_until(gen) == [lm.vlm.generate([e], 4)[0].split("\n\n")[0] for e in test[:2]]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: None, "does not exist"),
        (lambda d: (d.mkdir(parents=True), (d / "spec.json").write_text("{}")), "has no checkpoint/"),
    ],
)
def test_bad_run_dir_is_one_line_error(tmp_path, offline, make, message):
    run_dir = tmp_path / "runs" / "r1"
    make(run_dir)
    with pytest.raises(DpbenchError, match=message) as info:
        lm_eval.simple_evaluate(
            model="dpbench",
            model_args=f"run_dir={run_dir}",
            tasks=[TASK],
            device="cpu",
            task_manager=TaskManager(include_path=TASK_DIR, include_defaults=False),
        )
    assert "\n" not in str(info.value)
