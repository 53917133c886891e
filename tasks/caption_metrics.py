"""Caption metrics through pycocoevalcap, exactly as its `COCOEvalCap` computes them.

Captions go through its PTB tokenizer (Java), then BLEU-1..4, METEOR (Java), ROUGE-L and
CIDEr(-D) score them; the keys are pycocoevalcap's own (`Bleu_4`, `CIDEr`, ...), the values
its raw scores (CIDEr is not multiplied by 100). SPICE needs Stanford CoreNLP, which its
wrapper downloads at run time: it cannot run offline and is reported as unavailable.

METEOR starts a JVM that loads its paraphrase tables (seconds): one scorer is started per
process, on first use, and reused.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from functools import lru_cache
from typing import Sequence

from dpbench.errors import DpbenchError

METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")
UNAVAILABLE = {"SPICE": "needs Stanford CoreNLP downloaded at run time"}
JAVA_MISSING = "captioning needs Java 17 for pycocoevalcap's tokenizer and METEOR; install openjdk-17-jre"


def check_environment() -> None:
    """Java on PATH and pycocoevalcap importable, else one clear DpbenchError."""
    if shutil.which("java") is None:
        raise DpbenchError(JAVA_MISSING)
    try:
        import pycocoevalcap.eval  # noqa: F401
    except ImportError:
        raise DpbenchError("captioning needs pycocoevalcap: pip install 'pycocoevalcap>=1.2'") from None


@lru_cache(maxsize=1)
def meteor():
    """The process's METEOR scorer (its JVM stays up between evaluations)."""
    from pycocoevalcap.meteor.meteor import Meteor

    return Meteor()


def tokenize(captions: dict) -> dict:
    """pycocoevalcap's PTB tokenizer: {key: [{"caption": str}, ...]} -> {key: [str, ...]}."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    try:
        return PTBTokenizer().tokenize(captions)
    except PermissionError as e:  # it writes its temp file beside the package
        raise DpbenchError(
            f"pycocoevalcap's tokenizer cannot write beside its jar ({e.filename}); "
            "install pycocoevalcap where it is writable (e.g. a virtual environment)"
        ) from None


def caption_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Corpus scores of one predicted caption per image against that image's references."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} reference sets")
    if not predictions:
        raise ValueError("no captions to score")
    if any(not refs for refs in references):
        raise ValueError("every image needs at least one reference caption")
    check_environment()
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    # one tokenizer call for both sides (a JVM start saved): -preserveLines tokenizes line by line
    both = tokenize(
        {("ref", i): [{"caption": c} for c in refs] for i, refs in enumerate(references)}
        | {("hyp", i): [{"caption": p}] for i, p in enumerate(predictions)}
    )
    gts = {i: both[("ref", i)] for i in range(len(references))}
    res = {i: both[("hyp", i)] for i in range(len(predictions))}

    with contextlib.redirect_stdout(io.StringIO()):  # BLEU prints its n-gram statistics
        bleu, _ = Bleu(4).compute_score(gts, res)
    scores = {f"Bleu_{n}": float(b) for n, b in enumerate(bleu, start=1)}
    try:
        scores["METEOR"] = float(meteor().compute_score(gts, res)[0])
    except (ValueError, OSError) as e:  # the JVM died (memory?): its pipe is empty or closed
        broken = meteor()
        if broken.lock.locked():  # else its __del__ would wait for the lock forever
            broken.lock.release()
        meteor.cache_clear()
        raise DpbenchError(f"METEOR's Java process failed ({e}); it needs about 2 GB of memory") from None
    scores["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
    scores["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    return scores
