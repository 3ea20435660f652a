"""The bench's instruments, which know nothing of what is timed: the peak memory of a phase
(:class:`PeakMemory`: the CUDA allocator's peak or, on Linux, the growth of the peak resident
set read from ``/proc/self/status`` after resetting it through ``/proc/self/clear_refs``,
freed memory handed back first with ``malloc_trim``), counters of ``nn.MultiheadAttention``
calls (its ``forward`` patched for the while) and of host-device synchronisations, and the
machine itself: its name and bf16 peak, the image tower's multiply-accumulates per image,
and the versions and load averages the JSON records.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import inspect
import os
import platform
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from promptviz.backbone import Backbone

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, TFLOP/s.
# Matched against torch.cuda.get_device_name in order; --peak-tflops overrides.
BF16_PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),
                    ("H200 NVL", 835.0), ("H200", 989.0), ("A100", 312.0), ("L40S", 362.0))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_status(key: str) -> int | None:
    """A ``/proc/self/status`` field in bytes (Linux), else None."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) * 1024 if m else None


def _reset_rss_peak() -> bool:
    """Reset the process's peak RSS to its current RSS (Linux ≥ 4.0); False if impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _proc_status("VmHWM") is not None


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):   # give freed heap back (glibc)
            ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak memory of the code inside ``with``, in MiB (``mib``; None with a ``reason``)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.mib: float | None = None
        self.reason = ""

    def __enter__(self) -> PeakMemory:
        release_memory(self.device)
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._start = _proc_status("VmRSS")
            self._ok = self._start is not None and _reset_rss_peak()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            self.mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self._ok:
            self.mib = max(0, _proc_status("VmHWM") - self._start) / 2**20
        else:
            self.reason = "no /proc/self/clear_refs (not Linux): peak RSS cannot be reset"


def memory_metric(device: torch.device) -> dict[str, Any]:
    """What the ``*_peak_mib`` numbers measure on ``device``."""
    if device.type == "cuda":
        return {"name": "torch.cuda.max_memory_allocated", "includes_weights": True,
                "note": "peak of PyTorch's allocator over the phase: weights, cache, "
                        "activations and optimiser state"}
    if _proc_status("VmRSS") is not None and _reset_rss_peak():
        return {"name": "peak RSS growth", "includes_weights": False,
                "note": "peak resident set over the phase minus the resident set at its "
                        "start (Linux /proc/self/clear_refs); freed heap the allocator keeps "
                        "from earlier phases can hide part of the growth"}
    return {"name": None, "includes_weights": False,
            "note": "not measured: resetting the peak RSS needs Linux /proc/self/clear_refs"}


@contextlib.contextmanager
def count_attention() -> Iterator[dict[str, int]]:
    """Count ``nn.MultiheadAttention`` calls, and those that ask for the attention weights
    (``need_weights=True``), which take the slow, unfused path."""
    counts = {"mha_calls": 0, "need_weights_calls": 0}
    original = nn.MultiheadAttention.forward
    signature = inspect.signature(original)

    def forward(self: nn.MultiheadAttention, *args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        counts["mha_calls"] += 1
        counts["need_weights_calls"] += bool(bound.arguments["need_weights"])
        return original(self, *args, **kwargs)

    nn.MultiheadAttention.forward = forward
    try:
        yield counts
    finally:
        nn.MultiheadAttention.forward = original


@contextlib.contextmanager
def count_syncs(device: torch.device) -> Iterator[dict[str, int | None]]:
    """Count host–device synchronisations on CUDA (``torch.cuda.set_sync_debug_mode``);
    ``{"host_syncs": None}`` on a CPU, where there is nothing to synchronise."""
    counts: dict[str, int | None] = {"host_syncs": None}
    if device.type != "cuda":
        yield counts
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield counts
        finally:
            torch.cuda.set_sync_debug_mode("default")
    counts["host_syncs"] = sum("synchroniz" in str(w.message) for w in caught)



def image_tower_macs(bb: Backbone) -> int:
    """Multiply-accumulates of one image through the ViT image tower (patch embedding,
    blocks, projection). ViT-B/16 at 224 px: 17.6 G — the "17.6 GFLOPs" usually quoted
    counts multiply-accumulates; in floating-point operations it is twice that."""
    v = bb.model.visual
    n = 1 + bb.grid_size[0] * bb.grid_size[1]
    d = bb.vision_width
    p = v.patch_size[0]
    macs = (n - 1) * 3 * p * p * d + d * bb.embed_dim
    for block in v.transformer.resblocks:
        hidden = block.mlp.c_fc.out_features
        macs += 4 * n * d * d + 2 * n * n * d + 2 * n * d * hidden
    return int(macs)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} logical CPUs)"
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} logical CPUs)"


def bf16_peak_tflops(name: str) -> float | None:
    for key, value in BF16_PEAK_TFLOPS:
        if key in name:
            return value
    return None


def environment(device: torch.device) -> dict[str, Any]:
    import open_clip

    import promptviz
    env: dict[str, Any] = {
        "device": str(device), "device_name": device_name(device),
        "torch": torch.__version__, "open_clip": open_clip.__version__,
        "promptviz": promptviz.__version__, "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    if device.type == "cuda":
        env.update(cuda=torch.version.cuda,
                   tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                   tf32_cudnn=torch.backends.cudnn.allow_tf32)
    elif hasattr(os, "getloadavg"):
        env["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    return env


def load_at_end(env: dict[str, Any]) -> dict[str, Any]:
    """The load average when the measurements ended, and whether the machine was busy:
    other processes wanted more CPUs than there are (at the start, or over the run: the
    5-minute average at the end), so wall-clock times measure the machine's load as much
    as the code and the CPU-time ratios are the ones to read."""
    if "load_average_at_start" not in env:
        return {}
    end = [round(x, 2) for x in os.getloadavg()]
    busy = max(*env["load_average_at_start"][:2], *end[:2]) > (os.cpu_count() or 1)
    return {"load_average_at_end": end, "busy_machine": busy}

