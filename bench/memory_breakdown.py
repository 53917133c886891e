"""Where training's peak memory goes, on the training device: weights, trained gradients,
per-example gradients (or ghost clipping's per-example norms), optimizer state, and what
remains (activations and temporaries), with the activations autograd saves for backward
counted apart as a share of that remainder.

The peak is `PeakMemory`'s, measured: the resident-set high-water mark above the baseline on a
CPU, torch's peak allocated bytes (torch.cuda.memory_stats) on a GPU. The components are
derived from tensor sizes: the weights when training starts, the others at every optimizer step
(a global torch hook, so every method that steps a torch optimizer is read the same way), the
largest of each kind. What remains is the peak less the components it counts: it takes them
to be resident together at the peak, as they are at an optimizer step.

The saved activations are the bytes of the tensors autograd saves for backward during one
physical batch's forward (`torch.autograd.graph.saved_tensors_hooks` around it, which the
training loops enter through `note_saved_activations`), each storage once, the model's own
parameters and buffers (the weights, a part of their own) left out; the largest physical
batch's. They are not subtracted from the peak: what remains beside the parts above holds them.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Any, ContextManager, Iterable, Iterator

import torch
from torch.autograd.graph import saved_tensors_hooks
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
    "saved_activations": "the tensors autograd saves for backward in a physical batch's forward (saved_tensors_hooks; "
    "each storage once; parameters, buffers and the trained ones' autocast copies left out; under bf16 the copy of a "
    "frozen weight that autograd saves counts, as it is held until the backward), the largest physical batch's; "
    "a share of activations and rest, not subtracted from the peak",
    "no_saved_activations": "none: the method's forwards run without autograd (no_grad, no backward pass), "
    "so they save nothing for backward",
}
OUTSIDE_PEAK = "; resident before training, so outside a peak above that baseline"
NOT_STEPPED = "not seen: training stepped no torch optimizer"
NOT_COUNTED = "not seen: training counted no forward pass (the method does not call note_saved_activations)"
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


def storage(t: torch.Tensor) -> tuple[Any, int]:
    """The storage `t` views: a key (its address) and its bytes, what holding `t` keeps alive; a
    tensor without a storage of its own (sparse, nested) stands for itself."""
    try:
        s = t.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return ("tensor", id(t)), t.element_size() * t.numel()
    return s.data_ptr(), s.nbytes()


def weight_storages(model: torch.nn.Module) -> set[Any]:
    return {storage(t)[0] for t in [*model.parameters(), *model.buffers()]}


def cast_of(t: torch.Tensor, weights: set[Any]) -> bool:
    """Whether `t` is a dtype cast of one of the weights (autocast's copy of a trained parameter,
    which a bf16 linear layer saves in its place, or a view of it: the transpose a matmul saves)."""
    fn = (t if t._base is None else t._base).grad_fn
    if fn is None or type(fn).__name__ != "ToCopyBackward0" or not fn.next_functions:
        return False
    variable = getattr(fn.next_functions[0][0], "variable", None)
    return variable is not None and storage(variable)[0] in weights


class SavedTensors:
    """The bytes of the tensors autograd saves for backward since `start` (one forward): each
    storage once, however many tensors view it or however often it is saved; tensors off
    `device` and the weights of `model` (its parameters and buffers, and autocast's casts of
    them) are not counted. `with SavedTensors(model, device) as saved:` counts on its own;
    `note_saved_activations` feeds every breakdown's through one hook."""

    def __init__(self, model: torch.nn.Module, device: str | torch.device):
        self.model, self.device = model, torch.device(device)
        self.bytes = 0
        self.weights: set[Any] = set()
        self.seen: set[Any] = set()

    def start(self) -> None:
        self.bytes, self.seen = 0, set()
        self.weights = weight_storages(self.model)  # read each time: a method may replace a tensor's storage

    def pack(self, t: torch.Tensor) -> None:
        if not on_device(t, self.device):
            return
        key, n = storage(t)
        if key in self.seen or key in self.weights or cast_of(t, self.weights):
            return
        self.seen.add(key)
        self.bytes += n

    def __enter__(self) -> SavedTensors:
        self.start()
        self._hooks = counting_hooks([self])
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


def counting_hooks(counters: list[SavedTensors]) -> saved_tensors_hooks:
    """One pair of saved-tensor hooks (autograd applies only the innermost pair) that shows each
    saved tensor to `counters` and saves it unchanged; the packed value is a detached alias, no
    reference to the tensor's graph (torch's advice against a reference cycle)."""

    def pack(t: torch.Tensor) -> tuple[torch.Tensor, int]:
        for c in counters:
            c.pack(t)
        return t.detach(), t._version

    return saved_tensors_hooks(pack, _unpack)


def _unpack(packed: tuple[torch.Tensor, int]) -> torch.Tensor:
    # hooks switch off autograd's own check that a saved tensor was not changed in place; the
    # detached alias shares the tensor's version counter, so the check is made here instead
    t, version = packed
    if t._version != version:
        raise RuntimeError(
            "a tensor saved for backward was modified by an in-place operation "
            f"(version {t._version}, saved at {version})"
        )
    return t


_NOT_COUNTING = nullcontext()  # reusable: entering it does nothing


def note_saved_activations() -> ContextManager[None]:
    """Around one physical batch's forward: the tensors autograd saves for backward in it, for
    every memory breakdown in scope. The training loops enter it every physical batch; outside a
    breakdown it is a context that does nothing (no hook). The backward stays outside: it saves
    nothing, and torch.func (Opacus' per-example gradients for a layer it has no rule for, in a
    backward hook) refuses to run while saved-tensor hooks are set."""
    if not _ACTIVE:
        return _NOT_COUNTING
    return _counting(list(_ACTIVE))


@contextmanager
def _counting(breakdowns: list[MemoryBreakdown]) -> Iterator[None]:
    grad = torch.is_grad_enabled()  # a forward without autograd (DP-ZO's) saves nothing
    for b in breakdowns:
        b.saved.start()
    with counting_hooks([b.saved for b in breakdowns]):
        yield
    for b in breakdowns:
        b.read_saved(grad)


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
        self.saved = SavedTensors(model, self.device)  # one physical batch's saved activations
        self.saved_activations = 0  # the largest physical batch's
        self.forwards = {True: 0, False: 0}  # physical batches counted, by whether autograd was on

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

    def read_saved(self, grad: bool) -> None:
        self.forwards[grad] += 1
        self.saved_activations = max(self.saved_activations, self.saved.bytes)

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
        components["saved_activations"] = self.saved_part()  # after the remainder: a share of it, not beside it
        return {
            "device": peak["device"],
            "peak": {"bytes": peak["peak_bytes"], "how": MEASURED, "kind": peak["kind"]},
            "components": components,
        }

    def saved_part(self) -> dict[str, Any]:
        if self.forwards[True]:
            return component(self.saved_activations, True, SOURCES["saved_activations"])
        if self.forwards[False]:
            return component(self.saved_activations, True, SOURCES["no_saved_activations"])
        return component(None, True, NOT_COUNTED)


def component(n: int | float | None, in_peak: bool, source: str) -> dict[str, Any]:
    return {"bytes": n, "how": DERIVED, "in_peak": in_peak, "source": source}


def remainder(peak: int | float, components: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The peak less the parts it counts; none where one of them is unknown or they exceed it."""
    counted = [c["bytes"] for c in components.values() if c["in_peak"]]
    if None in counted:
        return component(None, True, UNKNOWN_PART)
    rest = peak - sum(counted)
    return component(rest, True, SOURCES["activations_and_rest"]) if rest >= 0 else component(None, True, OVER_PEAK)
