"""Where training's peak memory goes, on the training device: weights, trained gradients,
per-example gradients (or ghost clipping's per-example norms), optimizer state, and what
remains (activations and temporaries).

The peak is `PeakMemory`'s, measured: the resident-set high-water mark above the baseline on a
CPU, torch's peak allocated bytes (torch.cuda.memory_stats) on a GPU. The components are
derived from tensor sizes: the weights when training starts, the others at every optimizer step
(a global torch hook, so every method that steps a torch optimizer is read the same way), the
largest of each kind. What remains is the peak less the components it counts: it takes them
to be resident together at the peak, as they are at an optimizer step.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

MEASURED, DERIVED = "measured", "derived"
STEPPED = ("trained_gradients", "optimizer_state")  # read at the optimizer step
PER_EXAMPLE = ("grad_sample", "_norm_sample")  # Opacus' per-example gradients; ghost clipping's norms
# whether a PeakMemory kind counts what was resident before training (the weights among it)
WEIGHTS_IN_PEAK = {"cpu-rss-above-baseline": False, "cuda-max-allocated": True}
SOURCES = {
    "weights": "parameter and buffer sizes when training starts",
    "trained_gradients": ".grad and Opacus' clipped sum (summed_grad, DP only) at the optimizer step, the largest seen",
    "grad_sample": "Opacus' per-example gradients (grad_sample) after each physical batch's backward, the largest seen",
    "_norm_sample": "ghost clipping's per-example norms (Opacus' _norm_sample) after each physical batch's backward, "
    "the largest seen",
    "no_per_example": "none: the method forms no per-example gradients",
    "optimizer_state": "the optimizer's state tensors (Adam's moments) after each step, the largest seen",
    # each part is its largest at its own moment, which need not be the peak's: what the peak holds
    # beside them is at least this
    "activations_and_rest": "the peak less the components it counts (a lower bound: the parts are their largest, "
    "not necessarily their size at the peak)",
}
OUTSIDE_PEAK = "; resident before training, so outside a peak above that baseline"
NOT_STEPPED = "not seen: training stepped no torch optimizer"
UNKNOWN_PART = "not derived: a part the peak counts is not known"
OVER_PEAK = "not derived: the parts exceed the peak, so they were not all resident at once"


def on_device(t: torch.Tensor, device: torch.device) -> bool:
    return t.device.type == device.type and (device.index is None or t.device.index == device.index)


def tensor_bytes(values: Iterable[Any], device: torch.device) -> int:
    """Bytes of the distinct tensors among `values` that live on `device` (a list counts its items)."""
    seen, total = set(), 0
    for value in values:
        for t in value if isinstance(value, (list, tuple)) else [value]:
            if torch.is_tensor(t) and on_device(t, device) and t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.nbytes
    return total


_ACTIVE: list[MemoryBreakdown] = []  # the breakdowns in scope (training phases), for `note_per_example`


def note_per_example(params: Iterable[torch.nn.Parameter]) -> None:
    """A physical batch's per-example gradients (or ghost clipping's norms), read where they are
    whole: after its backward pass, before clipping and the audit's canaries replace them. The DP
    loop calls it; a method without per-example gradients never does."""
    if not _ACTIVE:  # the training loop calls it every physical batch: nothing to do outside a breakdown
        return
    params = list(params)
    for b in _ACTIVE:
        b.read_per_example(params)


class MemoryBreakdown:
    """Context manager around training: reads the tensors' sizes at each optimizer step in its
    scope; `breakdown(peak)` then splits a PeakMemory record of the training device."""

    def __init__(self, model: torch.nn.Module, device: str | torch.device):
        self.model, self.device = model, torch.device(device)
        # kind -> parameter id -> bytes at that parameter's last step, and their running sums:
        # an optimizer may step its parameters a few at a time (update pruning's freeze)
        self.held: dict[str, dict[int, int]] = {kind: {} for kind in STEPPED}
        self.total = dict.fromkeys(STEPPED, 0)
        self.largest = dict.fromkeys(STEPPED, 0)
        self.per_example: set[str] = set()  # which per-example tensors were seen (with bytes)
        self.per_example_bytes = 0
        self.stepped = False
        self.weights = 0

    def __enter__(self) -> MemoryBreakdown:
        self.weights = tensor_bytes([*self.model.parameters(), *self.model.buffers()], self.device)
        self.handle = register_optimizer_step_post_hook(self._read)
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()
        _ACTIVE.remove(self)

    def read_per_example(self, params: list[torch.nn.Parameter]) -> None:
        for name in PER_EXAMPLE:
            n = tensor_bytes([getattr(p, name, None) for p in params], self.device)
            if n:
                self.per_example.add(name)
                self.per_example_bytes = max(self.per_example_bytes, n)

    def _read(self, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        self.stepped = True
        for group in optimizer.param_groups:
            for p in group["params"]:
                self._hold("trained_gradients", p, [p.grad, getattr(p, "summed_grad", None)])
                self._hold("optimizer_state", p, optimizer.state.get(p, {}).values())
        for kind in STEPPED:
            self.largest[kind] = max(self.largest[kind], self.total[kind])

    def _hold(self, kind: str, p: torch.nn.Parameter, values: Iterable[Any]) -> None:
        n, held = tensor_bytes(values, self.device), self.held[kind]
        self.total[kind] += n - held.get(id(p), 0)
        held[id(p)] = n

    def breakdown(self, peak: dict[str, Any]) -> dict[str, Any]:
        """The parts of `peak`, a PeakMemory record of this device, each labelled measured or derived."""
        weights_in_peak = WEIGHTS_IN_PEAK[peak["kind"]]
        components = {
            "weights": component(
                self.weights, weights_in_peak, SOURCES["weights"] + ("" if weights_in_peak else OUTSIDE_PEAK)
            )
        }
        for kind in STEPPED:
            components[kind] = (
                component(self.largest[kind], True, SOURCES[kind])
                if self.stepped
                else component(None, True, NOT_STEPPED)
            )
        per_example = next((n for n in PER_EXAMPLE if n in self.per_example), "no_per_example")
        components["per_example_gradients"] = (
            component(self.per_example_bytes, True, SOURCES[per_example])
            if self.stepped or self.per_example_bytes
            else component(None, True, NOT_STEPPED)
        )
        components["activations_and_rest"] = remainder(peak["peak_bytes"], components)
        return {
            "device": peak["device"],
            "peak": {"bytes": peak["peak_bytes"], "how": MEASURED, "kind": peak["kind"]},
            "components": components,
        }


def component(n: int | float | None, in_peak: bool, source: str) -> dict[str, Any]:
    return {"bytes": n, "how": DERIVED, "in_peak": in_peak, "source": source}


def remainder(peak: int | float, components: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The peak less the parts it counts; none where one of them is unknown or they exceed it."""
    counted = [c["bytes"] for c in components.values() if c["in_peak"]]
    if None in counted:
        return component(None, True, UNKNOWN_PART)
    rest = peak - sum(counted)
    return component(rest, True, SOURCES["activations_and_rest"]) if rest >= 0 else component(None, True, OVER_PEAK)
