"""Loading a model: the registered names (the embedded default, built from its recipe in
`dpbench.models.pretrain` when no shipped folder matches it, and the random-init systems shapes)
and any local checkpoint of a supported architecture (`dpbench.models.architectures`: LLaVA,
Idefics3/SmolVLM, Qwen2-VL); the weights' hash a result records."""

from __future__ import annotations

import fcntl
import functools
import hashlib
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
from dpbench.models.random_init import (
    FULL_SHAPE,
    LLAVA_1_5_7B,
    QWEN2_VL_2B,
    SMOLVLM_256M,
    SOURCE,
    ModelShape,
    PublicShape,
    build_hf_model,
    shaped_configs,
)
from dpbench.output import quiet_third_party
from dpbench.registry import MODELS


class ModelLoader:
    name: str  # set by the registry decorator
    systems_only = False  # random weights: `dpbench bench` measures it, `dpbench run` refuses it

    def load(self, device: str) -> VisionLanguageModel:
        raise NotImplementedError

    def ensure_built(self) -> Path:
        """The checkpoint folder `load` reads (built first if need be)."""
        raise NotImplementedError


# The pre-trained embedded model ships with the package (weights, tokenizer, processor, config),
# named by its recipe key: the committed results were measured on these very weights. A rebuild
# from the recipe on another CPU need not give the same bits (float reductions differ), so the
# cache is used only when the recipe changed and no shipped folder matches.
SHIPPED_WEIGHTS = Path(__file__).parent / "weights"


def _build_tiny_llava(path: str, language_recipe: dict, vision_recipe: dict, lm_recipe: dict) -> None:
    """Build, pre-train and save the embedded model (runs in its own process)."""
    quiet_third_party()
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


def weights_sha256(folder: str | Path) -> str | None:
    """sha256 of a checkpoint folder's weights: of its one weights file, or over the sorted
    (name, sha256) lines of its shards. None when the folder holds no weights file."""
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        return None
    digests = [(f.name, _file_sha256(f.resolve(), *_stamp(f))) for f in files]
    if len(digests) == 1:
        return digests[0][1]
    return hashlib.sha256("".join(f"{name} {d}\n" for name, d in digests).encode()).hexdigest()


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=64)
def _file_sha256(path: Path, size: int, mtime_ns: int) -> str:
    """Keyed by size and mtime too: a re-audit or an unlearning run loads the same base several
    times, and a 7 B checkpoint's shards are read once per process, not per load."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**24), b""):
            h.update(block)
    return h.hexdigest()


def build_tiny_llava(path: str | Path, recipe: dict | None = None) -> None:
    """Build and pre-train the embedded model into `path` (which must not exist) in a process
    of its own; `recipe` overrides stage settings ({"language": {...}, "vision": {...}, "lm": {...}})."""
    path = Path(path)
    if path.exists():
        raise DpbenchError(f"{path} exists: give a new folder to build the model into")
    path.parent.mkdir(parents=True, exist_ok=True)
    from dpbench.models import pretrain  # as below: the recipe loads only when named

    recipe = recipe or {}
    stages = [
        {**pretrain.PRETRAIN_LANGUAGE, **recipe.get("language", {})},
        {**pretrain.PRETRAIN_VISION, **recipe.get("vision", {})},
        {**pretrain.PRETRAIN, **recipe.get("lm", {})},
    ]
    # its own process, so a training process's memory high-water mark stays clean
    proc = multiprocessing.get_context("spawn").Process(target=_build_tiny_llava, args=(str(path), *stages))
    proc.start()
    proc.join()
    if proc.exitcode != 0 or not path.exists():
        raise DpbenchError(f"building tiny-llava failed (exit {proc.exitcode}); see the output above")


def load_hf(path: str | Path, device: str, info: ModelInfo) -> VisionLanguageModel:
    """A checkpoint folder (or hub-cache id) of any supported architecture; `info.architecture`
    is replaced by the checkpoint's own `model_type`."""
    quiet_third_party()
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
    """~0.7 M-parameter LLaVA (CLIP vision, Llama LM), pre-trained on public digit images; shipped."""

    def key(self) -> str:
        from dpbench.models import pretrain, tiny_llava  # as above: the recipe loads only when named

        return "tiny-llava-" + tiny_llava.config_key(
            pretrain.CORPUS_VERSION, pretrain.PRETRAIN_LANGUAGE, pretrain.PRETRAIN_VISION, pretrain.PRETRAIN
        )

    def path(self) -> Path:
        shipped = SHIPPED_WEIGHTS / self.key()
        return shipped if shipped.is_dir() else cache_dir() / self.key()

    def ensure_built(self) -> Path:
        path = self.path()
        if path.exists():
            return path
        # one builder at a time: concurrent runs (a sweep, a second terminal) wait for it
        with open(path.with_name(path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not path.exists():
                print(
                    f"The shipped tiny-llava does not match this recipe ({self.key()}): building it in {path} "
                    "(once; 10 to 20 minutes on 2 CPU cores)"
                )
                build_tiny_llava(path)
        return path

    def load(self, device: str) -> VisionLanguageModel:
        path = self.ensure_built()
        info = ModelInfo(self.name, "embedded-pretrained", str(path), "llava", weights_sha256(path))
        return load_hf(path, device, info)


class RandomInit(ModelLoader):
    """A published architecture's shape with random weights (`dpbench.models.random_init`)."""

    systems_only = True
    public: PublicShape

    def load(self, device: str, shape: ModelShape = FULL_SHAPE) -> VisionLanguageModel:
        from dpbench.models.random_init_processors import systems_processor, systems_tokenizer

        quiet_third_party()
        arch = self.public.architecture
        tokenizer = systems_tokenizer(arch)
        model = build_hf_model(self.public, shape, tokenizer, device)
        vision = model.config.vision_config.to_dict()
        processor = systems_processor(arch, vision, tokenizer, self.public.top.get("scale_factor"))
        return VisionLanguageModel(model, processor, ModelInfo(self.name, SOURCE, None, arch), device=device)


@MODELS.register("llava-1.5-7b-random")
class Llava15Random(RandomInit):
    """LLaVA-1.5-7B's shape, random weights (systems only): CLIP-L/14-336, 576 tokens, 32 x 4096 Llama."""

    public = LLAVA_1_5_7B


@MODELS.register("qwen2-vl-2b-random")
class Qwen2VL2BRandom(RandomInit):
    """Qwen2-VL-2B's shape, random weights (systems only): 32-block ViT, 256 tokens, 28 x 1536 Qwen2."""

    public = QWEN2_VL_2B


@MODELS.register("smolvlm-256m-random")
class SmolVLM256MRandom(RandomInit):
    """SmolVLM-256M's shape, random weights (systems only): SigLIP-B/16-512, 64 tokens, 30 x 576 Llama."""

    public = SMOLVLM_256M


def check_model_name(name_or_path: str) -> None:
    """A registered name, a local folder, or a hub id (loaded from the local cache only);
    anything else is the unknown-name error with close matches."""
    if name_or_path not in MODELS and not Path(name_or_path).is_dir() and "/" not in name_or_path:
        MODELS.get(name_or_path)


def is_systems_only(name_or_path: str) -> bool:
    return name_or_path in MODELS and MODELS.get(name_or_path).systems_only


def check_shape(name_or_path: str, shape: ModelShape) -> None:
    """A shape only for a random-init systems model, and one its architecture can take."""
    if shape == FULL_SHAPE:
        return
    if not is_systems_only(name_or_path):
        raise DpbenchError(
            f"--layers and --hidden-size shape the random-init systems models only "
            f"({', '.join(n for n in MODELS if MODELS.get(n).systems_only)}), not {name_or_path}"
        )
    shaped_configs(MODELS.get(name_or_path).public, shape)  # raises on a depth or width it cannot take


def load_model(name_or_path: str, device: str, shape: ModelShape = FULL_SHAPE) -> VisionLanguageModel:
    """A registered model name, or a local checkpoint folder / hub-cache id (offline); `shape`
    truncates a random-init systems model."""
    check_model_name(name_or_path)
    check_shape(name_or_path, shape)
    if is_systems_only(name_or_path):
        return MODELS.get(name_or_path)().load(device, shape)
    if name_or_path in MODELS:
        return MODELS.get(name_or_path)().load(device)
    path = Path(name_or_path)  # a hub id has no local folder: its path and weights stay unrecorded
    local = path.is_dir()
    info = ModelInfo(
        name_or_path, "local", str(path.resolve()) if local else None, "llava", weights_sha256(path) if local else None
    )
    return load_hf(name_or_path, device, info)


def load_skeleton(name_or_path: str, shape: ModelShape = FULL_SHAPE) -> VisionLanguageModel:
    """The model's modules and processor without its weights, on the meta device (nothing is
    allocated or read but the config and the processor's files): what a run's checks read
    (parameter groups, trainable coordinates, the tokenizer) before, or instead of, a load."""
    check_model_name(name_or_path)
    check_shape(name_or_path, shape)
    if is_systems_only(name_or_path):
        return MODELS.get(name_or_path)().load("meta", shape)
    path = MODELS.get(name_or_path)().ensure_built() if name_or_path in MODELS else name_or_path
    quiet_third_party()
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        processor = architecture(config.model_type).load_processor(path)
    except (OSError, ValueError) as e:
        raise DpbenchError(f"cannot load model {path}: {str(e).splitlines()[0]}") from None
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config, attn_implementation="eager")
    info = ModelInfo(name_or_path, "skeleton", None, config.model_type)
    return VisionLanguageModel(model.eval(), processor, info, device="meta")
