"""Dual-Priv Pruning: DP-SGD with visual-token pruning and noisy-update pruning.

Token pruning (a fresh random half of the visual tokens per forward) cuts the activations and
per-example gradient work in the language model; update pruning keeps the top 60 % of each
tensor's noisy gradient coordinates (post-processing: ε is unchanged). The defaults were
chosen on the embedded ScienceQA validation split (the figures: benchmarks/README.md, "Learning
rates and dualpriv's defaults"): there `random` beat the informed strategies (VisionZip `merge`,
[CLS] attention, text-guided); keeping half the visual tokens scored as DP-SGD did where the
paper's quarter cost accuracy (a quarter is 16 of the embedded model's 64 tokens, against 144
of LLaVA-1.5's 576); and keeping 60 % of the update cost nothing where 30 % did. The two
ablations share this class and change only their defaults.

Clipping defaults to per-example clipping, as `dpsgd`'s: with the visual tokens pruned,
materialising the per-example gradients costs less than ghost clipping's second backward pass
(on the embedded model, the same accuracy at a higher throughput and no more memory: the
figures are in the same section). `clipping: ghost` gives the same clipped gradient
without materialising per-example gradients, for models whose parameters outweigh their
activations.
"""

from __future__ import annotations

from dpbench.methods.base import METHODS, Method, TrainReport
from dpbench.methods.dpsgd import check_clipping, clipping_passes, dp_sgd_noise_multiplier, train_dp_sgd
from dpbench.methods.update_pruning import UpdatePruner
from dpbench.models.pruning_spec import TokenPruning


@METHODS.register("dualpriv")
class DualPriv(Method):
    """DP-SGD + visual-token pruning (keep 0.5, random) + top-k pruning of the noisy update (keep 0.6)."""

    # the pruning component's own default keep is 0.25 (the paper's)
    default_token_pruning = TokenPruning("random", keep_ratio=0.5)
    options = {
        "fused_noise": False,  # Gaussian noise, std σ·C/B, on merged tokens in training (not accounted)
        "update_keep": 0.6,  # null: no update pruning
        "update_scope": "tensor",  # or "global"
        "update_adam": "freeze",  # pruned coordinates neither move nor change Adam's moments; or "decay"
        "secure_rng": False,
        "clipping": "per-sample",  # or "ghost"
    }
    per_example_gradients = True
    audit_block = True

    def __init__(self, **options):
        super().__init__(**options)
        check_clipping(self.opts["clipping"])  # bad values fail here, before anything slow
        self.update_pruner()

    def passes_per_example(self) -> tuple[int, int]:
        return clipping_passes(self.opts["clipping"])

    def update_pruner(self) -> UpdatePruner | None:
        o = self.opts
        if o["update_keep"] is None:
            return None
        return UpdatePruner(o["update_keep"], o["update_scope"], o["update_adam"])

    def train(self, model, data, spec, delta) -> TrainReport:
        t, p = spec.training, spec.privacy
        self.update = self.update_pruner()
        if model.token_pruner is not None and self.opts["fused_noise"]:
            sigma = dp_sgd_noise_multiplier(spec, delta, len(data))  # the one train_dp_sgd will use
            model.token_pruner.fused_noise_std = sigma * p.max_grad_norm / t.batch_size  # the averaged gradient's noise
        report = train_dp_sgd(
            model,
            data,
            spec,
            delta,
            label=self.name,
            post_noise_hook=self.update,
            secure_rng=self.opts["secure_rng"],
            clipping=self.opts["clipping"],
        )
        report.details["update_pruning"] = self.update.details() if self.update is not None else None
        return report


@METHODS.register("dualpriv-token")
class DualPrivToken(DualPriv):
    """Ablation of dualpriv: DP-SGD + visual-token pruning only."""

    options = {**DualPriv.options, "update_keep": None}


@METHODS.register("dualpriv-update")
class DualPrivUpdate(DualPriv):
    """Ablation of dualpriv: DP-SGD + noisy-update pruning only."""

    default_token_pruning = TokenPruning("none")
