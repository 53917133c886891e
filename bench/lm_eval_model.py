"""lm-evaluation-harness interop: a `dpbench` model type that scores a finished run exactly as
dpbench does, and a task folder (`TASK_DIR`) with ScienceQA-IMG as dpbench builds it.

    python -m dpbench.lm_eval_model --model dpbench --model_args run_dir=runs/<id> --tasks scienceqa_img_dpbench

That is `lm_eval --model dpbench --model_args run_dir=runs/<id> --tasks scienceqa_img_dpbench
--include_path <TASK_DIR>` with this module imported (lm-eval 0.4.13 discovers no model plugins:
the model type exists once this module is imported) and `--include_path TASK_DIR` added when
absent. From Python: import this module, then `lm_eval.simple_evaluate(model="dpbench", ...,
task_manager=TaskManager(include_path=TASK_DIR))`.

Model args: `run_dir` (a run folder from `dpbench run --save-checkpoint`: its `checkpoint/`
and `spec.json`) or `pretrained` (a checkpoint folder or a registered dpbench model, scored
as-is); `device`; `batch_size` (prompts per forward; 64, ScienceQA.evaluate's, reproduces
dpbench's batches and so its scores to the bit; lm-eval's CLI passes 1 unless given
`--batch_size`, which changes scores only by float rounding). The `random` token-pruning
strategy draws afresh here, so only its runs do not reproduce exactly.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from pathlib import Path

import torch

import dpbench.tasks
from dpbench import phases
from dpbench.cache import cache_dir
from dpbench.errors import DpbenchError
from dpbench.examples import Example
from dpbench.files import read_json
from dpbench.models.base import ModelInfo, VisionLanguageModel
from dpbench.models.loading import load_model
from dpbench.run_folder import RunFolder
from dpbench.spec import RunSpec

try:
    import lm_eval.models  # noqa: F401  lm-eval's own names first: it fills only an empty registry itself
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError:
    raise DpbenchError("lm-eval is not installed: pip install 'dpbench[lm-eval]'") from None

TASK_DIR = str(Path(dpbench.tasks.__file__).parent / "lm_eval")
DEFAULT_BATCH_SIZE = 64  # ScienceQA.evaluate's batch: the same padding, so the same floats
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's own default

log = logging.getLogger(__name__)


def load_run(run_dir: str | Path, device: str) -> VisionLanguageModel:
    """A finished run's fine-tuned model, transformed as the run's was before evaluating
    (e.g. dualpriv's default visual-token pruning), so scores match the run's."""
    folder = RunFolder(Path(run_dir))
    if not folder.path.is_dir():
        raise DpbenchError(f"run folder {folder.path} does not exist")
    folder.require_checkpoint()  # before reading anything else
    spec = RunSpec.from_record(read_json(folder.spec, fix="rerun the run"))
    method = phases.make_method(spec)  # bad options fail before the slow load
    info = ModelInfo(spec.model, "local", str(folder.checkpoint.resolve()), "llava")
    return phases.load_checkpoint(spec, method, folder, info)


def image_file(image) -> Path:
    """A PIL image as a PNG in dpbench's cache, named by its RGB pixels: dpbench's encoder reads
    images by path, PNG is lossless, and each image is written once however often it is scored."""
    rgb = image.convert("RGB")  # what dpbench's `load_image` does to a file
    digest = hashlib.sha1(repr(rgb.size).encode() + rgb.tobytes()).hexdigest()[:20]
    path = cache_dir() / "lm-eval-images" / f"{digest}.png"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{digest}.{os.getpid()}.png")
        rgb.save(tmp, format="PNG")
        os.replace(tmp, path)  # atomic: a concurrent evaluation never reads half a file
    return path


def _device(device: str | None) -> str:
    # lm-eval's CLI passes cuda:0 unless told otherwise; like its `hf` model, fall back to the CPU
    if not device or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        log.warning("device %s asked for but CUDA is unavailable; using the CPU", device)
        return "cpu"
    return str(device)


def _batch_size(value) -> int:
    if value is None or str(value).startswith("auto"):  # no automatic search: the default fits
        return DEFAULT_BATCH_SIZE
    try:
        size = int(value)
    except ValueError:
        raise DpbenchError(f"batch_size must be a positive integer or 'auto', got {value!r}") from None
    if size < 1:
        raise DpbenchError(f"batch_size must be a positive integer or 'auto', got {value!r}")
    return size


@register_model("dpbench")
class DpbenchLM(LM):
    """A dpbench run's model, prompted through dpbench's chat template and encoder."""

    MULTIMODAL = True  # lm-eval hands tasks with `doc_to_image` only to multimodal models

    def __init__(
        self,
        run_dir: str | None = None,
        pretrained: str | None = None,
        device: str | None = None,
        batch_size: int | str | None = None,
        max_batch_size: int | None = None,
        **unknown,
    ):
        super().__init__()
        if unknown:
            raise DpbenchError(
                f"the dpbench model has no argument(s) {', '.join(sorted(unknown))}; "
                "known: run_dir, pretrained, device, batch_size"
            )
        if (run_dir is None) == (pretrained is None):
            raise DpbenchError("give the dpbench model one of run_dir=runs/<id> or pretrained=<checkpoint folder>")
        device = _device(device)
        if run_dir is not None:
            self.vlm = load_run(run_dir, device)
        else:
            self.vlm = load_model(str(pretrained), device)
        self._device = self.vlm.device
        self.batch_size = _batch_size(batch_size)  # max_batch_size (lm-eval's auto-batch cap) is unused

    @property
    def tokenizer_name(self) -> str:  # fingerprints lm-eval's request cache
        return self.vlm.info.path or self.vlm.info.name

    def apply_chat_template(self, chat_history, add_generation_prompt=True) -> str:
        raise DpbenchError("the dpbench model renders dpbench's own chat template; drop --apply_chat_template")

    def _example(self, context: str, aux: dict | None, images: dict) -> Example:
        """The prompt as dpbench sees it: lm-eval's context is the user turn's text."""
        visual = (aux or {}).get("visual")
        visual = visual if isinstance(visual, (list, tuple)) else [visual] if visual is not None else []
        if len(visual) > 1:
            raise DpbenchError(f"dpbench models take one image per prompt; a request has {len(visual)}")
        image = None
        if visual:
            v = visual[0]
            # lm-eval repeats one image object across a doc's choices: hash it once; the dict
            # holds the object too, so its id is not reused while the dict lives
            if id(v) not in images:
                images[id(v)] = (v, Path(v) if isinstance(v, (str, Path)) else image_file(v))
            image = images[id(v)][1]
        return Example(uid="", prompt=context, target="", image=image)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        from tqdm import tqdm

        # one example per (context, image), its continuations as choices: dpbench's unit of scoring
        choices: dict[Example, list[str]] = {}
        keys, images = [], {}
        for req in requests:
            context, continuation, *aux = req.args
            e = self._example(context, aux[0] if aux else None, images)
            if continuation not in choices.setdefault(e, []):
                choices[e].append(continuation)
            keys.append((e, continuation))
        examples = [
            Example(uid=str(i), prompt=e.prompt, target="", image=e.image, choices=tuple(c))
            for i, (e, c) in enumerate(choices.items())
        ]
        scores = {}
        for i in tqdm(range(0, len(examples), self.batch_size), disable=disable_tqdm, desc="dpbench loglikelihood"):
            chunk = examples[i : i + self.batch_size]
            for e, row in zip(chunk, self.vlm.choice_scores(chunk)):
                scores.update({(e.prompt, e.image, c): s for c, s in zip(e.choices, row)})
        out = [scores[(e.prompt, e.image, c)] for e, c in keys]
        for req, result in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood", req.args, result)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        raise NotImplementedError(
            "the dpbench model scores continuations of a prompt (multiple choice, "
            "loglikelihood); rolling perplexity tasks are not supported"
        )

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy, as dpbench generates; the text is cut at the first of the task's `until` strings."""
        out, images = [], {}
        for req in requests:
            context, gen_kwargs, *aux = req.args
            kwargs = dict(gen_kwargs or {})
            if kwargs.get("do_sample"):
                raise DpbenchError("the dpbench model generates greedily; the task asks for sampling (do_sample)")
            text = self.vlm.generate(
                [self._example(context, aux[0] if aux else None, images)],
                int(kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS)),
            )[0]
            until = kwargs.get("until") or []
            for stop in [until] if isinstance(until, str) else until:
                text = text.split(stop)[0] if stop else text
            self.cache_hook.add_partial("generate_until", req.args, text)
            out.append(text)
        return out


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line with the `dpbench` model type registered; `--include_path
    TASK_DIR` is added when no include path is given (lm-eval takes only one)."""
    from lm_eval.__main__ import cli_evaluate

    argv = list(sys.argv[1:] if argv is None else argv)
    asks_help = not argv or argv[0] in ("-h", "--help")
    if not asks_help and not any(a.split("=")[0] == "--include_path" for a in argv):
        argv += ["--include_path", TASK_DIR]
    sys.argv = ["lm-eval", *argv]  # lm-eval's parser reads sys.argv
    try:
        cli_evaluate()
    except DpbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    # `python -m` runs this file as __main__: alias it, so that a later `import
    # dpbench.lm_eval_model` finds it instead of registering the model type a second time
    sys.modules.setdefault("dpbench.lm_eval_model", sys.modules[__name__])
    main()
