"""Model loaders: registered names (the embedded default) and any local checkpoint of a supported
architecture (`dpbench.models.architectures`: LLaVA, Idefics3/SmolVLM, Qwen2-VL)."""

from __future__ import annotations

import fcntl
import logging
import multiprocessing
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from dpbench.cache import cache_dir
from dpbench.errors import DpbenchError
from dpbench.models.architectures import architecture
from dpbench.models.base import ModelInfo, VisionLanguageModel
from dpbench.registries import MODELS


class ModelLoader:
    name: str  # set by the registry decorator

    def load(self, device: str) -> VisionLanguageModel:
        raise NotImplementedError


PRETRAIN_LANGUAGE = dict(steps=5000, batch_size=32, lr=1e-3, seed=0, n=40000)
PRETRAIN_VISION = dict(steps=1000, batch_size=64, lr=2e-3, seed=0)
PRETRAIN = dict(steps=3000, batch_size=32, lr=5e-4, seed=0)  # 2e-3 undid stage 0: text MC 0.997 -> 0.643


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)


def _build_tiny_llava(path: str, language_recipe: dict, vision_recipe: dict, lm_recipe: dict) -> None:
    """Build, pre-train and save the embedded model (runs in its own process)."""
    _quiet_transformers()
    from dpbench.models import (  # the recipe (and the task package it reads digits from) loads only to build
        pretrain,
        tiny_llava,
    )

    path = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=path.parent))
    (tmp / "images").mkdir()
    examples = pretrain.corpus(tmp / "images")
    tokenizer = tiny_llava.build_tokenizer(pretrain.tokenizer_corpus(examples))
    processor = tiny_llava.build_processor(tokenizer)
    model = tiny_llava.build_model(tokenizer, seed=lm_recipe["seed"])
    wrapper = VisionLanguageModel(model, processor, ModelInfo("tiny-llava", "embedded-pretrained", None, "llava"))
    language = dict(language_recipe)
    text = pretrain.language_corpus(language.pop("n"))
    language_losses = pretrain.pretrain_language(wrapper, text, **language)
    vision_losses = pretrain.pretrain_vision(wrapper, **vision_recipe)
    losses = pretrain.pretrain(wrapper, examples, **lm_recipe)
    tiny_llava.save(model, processor, tmp / "model")
    curves = {
        "pretrain_language_loss.txt": language_losses,
        "pretrain_vision_loss.txt": vision_losses,
        "pretrain_loss.txt": losses,
    }
    for name, curve in curves.items():
        (tmp / "model" / name).write_text("\n".join(f"{x:.5f}" for x in curve))
    os.replace(tmp / "model", path)  # atomic: a crash leaves no half-built cache entry
    shutil.rmtree(tmp, ignore_errors=True)


def load_hf(path: str | Path, device: str, info: ModelInfo) -> VisionLanguageModel:
    """A checkpoint folder (or hub-cache id) of any supported architecture; `info.architecture`
    is replaced by the checkpoint's own `model_type`."""
    _quiet_transformers()
    from transformers import AutoConfig, AutoModelForImageTextToText

    try:
        model_type = AutoConfig.from_pretrained(path, local_files_only=True).model_type
        arch = architecture(model_type)
        processor = arch.load_processor(path)
        # eager attention in every sub-model (vision tower included): faster than SDPA on CPU at
        # small sizes, as before for LLaVA
        model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True, attn_implementation="eager")
    except (OSError, ValueError) as e:
        raise DpbenchError(f"cannot load model {path}: {str(e).splitlines()[0]}") from None
    model.eval()
    return VisionLanguageModel(model, processor, replace(info, architecture=model_type), device=device)


@MODELS.register("tiny-llava")
class TinyLlava(ModelLoader):
    """~0.7 M-parameter LLaVA (CLIP vision, Llama LM), pre-trained on public digit images."""

    def path(self) -> Path:
        from dpbench.models import pretrain, tiny_llava  # as above: the recipe loads only when named

        return cache_dir() / (
            "tiny-llava-" + tiny_llava.config_key(pretrain.CORPUS_VERSION, PRETRAIN_LANGUAGE, PRETRAIN_VISION, PRETRAIN)
        )

    def ensure_built(self) -> Path:
        path = self.path()
        if path.exists():
            return path
        # one builder at a time: concurrent runs (a sweep, a second terminal) wait for it
        with open(path.with_name(path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._build(path)
        return path

    def _build(self, path: Path) -> None:
        if not path.exists():
            print(f"Building the embedded tiny-llava in {path} (once; about ten minutes on 2 CPU cores)")
            # its own process, so the training process's memory high-water mark stays clean
            proc = multiprocessing.get_context("spawn").Process(
                target=_build_tiny_llava, args=(str(path), PRETRAIN_LANGUAGE, PRETRAIN_VISION, PRETRAIN)
            )
            proc.start()
            proc.join()
            if proc.exitcode != 0 or not path.exists():
                raise DpbenchError(f"building tiny-llava failed (exit {proc.exitcode}); see the output above")

    def load(self, device: str) -> VisionLanguageModel:
        path = self.ensure_built()
        return load_hf(path, device, ModelInfo(self.name, "embedded-pretrained", str(path), "llava"))


def check_model_name(name_or_path: str) -> None:
    """A registered name, a local folder, or a hub id (loaded from the local cache only);
    anything else is the unknown-name error with close matches."""
    if name_or_path not in MODELS and not Path(name_or_path).is_dir() and "/" not in name_or_path:
        MODELS.get(name_or_path)


def load_model(name_or_path: str, device: str) -> VisionLanguageModel:
    """A registered model name, or a local checkpoint folder / hub-cache id (offline)."""
    check_model_name(name_or_path)
    if name_or_path in MODELS:
        return MODELS.get(name_or_path)().load(device)
    path = Path(name_or_path)  # a hub id has no local folder: its path stays unrecorded
    return load_hf(
        name_or_path, device, ModelInfo(name_or_path, "local", str(path.resolve()) if path.is_dir() else None, "llava")
    )
