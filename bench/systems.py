"""Systems figures: peak memory per device during a phase, and the environment a run had.

CPU peak memory is the kernel's resident-set high-water mark (VmHWM) during the phase minus
the resident set just before it. The high-water mark is reset at the phase's start by
writing 5 to /proc/self/clear_refs, so loading the model or building data earlier in the
process does not mask the phase's own peak. Where that reset is not allowed, a sampling
thread polls the resident set instead (which can miss very short spikes).
"""

from __future__ import annotations

import gc
import importlib.metadata
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from dpbench.errors import DpbenchError

PACKAGES = ("dpbench", "torch", "transformers", "opacus", "numpy", "scikit-learn", "jsonschema")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Context manager: peak memory of the enclosed phase on the CPU and each CUDA device."""

    def __init__(self, device: str):
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:  # "cuda": this process's current GPU
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.records: list[dict] = []

    def __enter__(self) -> PeakMemory:
        gc.collect()
        self.baseline = _status_kib("VmRSS") * 1024
        self._sampler = None
        if not _reset_hwm():
            self._peak, self._stop = self.baseline, threading.Event()
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.cuda_baseline = torch.cuda.memory_allocated(self.device)
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, _status_kib("VmRSS") * 1024)
            time.sleep(0.002)

    def __exit__(self, *exc) -> None:
        if self._sampler is None:
            peak = _status_kib("VmHWM") * 1024
        else:
            self._stop.set()
            self._sampler.join()
            peak = self._peak
        self.records = [
            {
                "device": "cpu",
                "name": cpu_name(),
                "kind": "cpu-rss-above-baseline",
                "peak_bytes": max(0, peak - self.baseline),
                "baseline_bytes": self.baseline,
                "reserved_bytes": None,
            }
        ]
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.records.append(
                {
                    "device": str(self.device),
                    "name": torch.cuda.get_device_name(self.device),
                    "kind": "cuda-max-allocated",
                    "peak_bytes": int(torch.cuda.max_memory_allocated(self.device)),
                    "baseline_bytes": int(self.cuda_baseline),
                    "reserved_bytes": int(torch.cuda.max_memory_reserved(self.device)),
                }
            )

    def device_record(self) -> dict | None:
        """The record of the device training ran on; none for a device without one (MPS)."""
        name = "cpu" if self.device.type == "cpu" else str(self.device)
        return next((r for r in self.records if r["device"] == name), None)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def check_device(device: str) -> None:
    """The spec's device exists in this torch and on this machine (its form is checked by the spec)."""
    kind, _, index = device.partition(":")
    if kind == "cuda":
        if torch.version.cuda is None or not torch.cuda.is_available():
            why = (
                f"this torch ({torch.__version__}) is built without CUDA"
                if torch.version.cuda is None
                else ("no CUDA device is visible")
            )
            raise DpbenchError(f"--device {device}: {why}; use --device cpu")
        if index and int(index) >= torch.cuda.device_count():
            raise DpbenchError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise DpbenchError(f"--device {device}: MPS is not available here; use --device cpu")


def devices(device: str) -> list[dict]:
    out = [{"type": "cpu", "index": None, "name": cpu_name(), "total_memory_bytes": _total_ram()}]
    dev = torch.device(device)
    if dev.type == "cuda":
        index = dev.index or 0
        props = torch.cuda.get_device_properties(index)
        out.append({"type": "cuda", "index": index, "name": props.name, "total_memory_bytes": int(props.total_memory)})
    return out


def _total_ram() -> int | None:
    try:
        return _read_meminfo_kib("MemTotal") * 1024
    except OSError:
        return None


def _read_meminfo_kib(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(field)


def git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def environment(device: str) -> dict:
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": packages,
        "git_commit": git_commit(),
        "devices": devices(device),
    }


def throughput(wall_s: float, samples: int, tokens: int) -> dict:
    wall = max(wall_s, 1e-9)
    return {"wall_s": round(wall_s, 4), "samples_per_s": samples / wall, "tokens_per_s": tokens / wall}
