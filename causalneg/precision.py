"""``precision: auto`` for training, encoding and mining: bf16 where the hardware computes it natively, fp32
elsewhere.

- CPU: bf16 only with native bf16 matrix units, AMX (``amx_bf16``) or AVX512-BF16 (``avx512_bf16``). Without
  them (AVX2-only CPUs) oneDNN emulates bf16 and it runs slower than fp32 (measured by
  ``experiments/bench_throughput.py``: MiniLM training 15-17x slower here), so ``auto`` picks fp32 there.
- CUDA: bf16 where the GPU supports it (``torch.cuda.is_bf16_supported()``, Ampere and later).

:func:`causalneg.config.resolve_precisions` rewrites every ``auto`` in a composed config to what it resolves to
on this machine, once, before a stage runs: the run's logged parameters and every artifact fingerprint (mining's
``dense.precision``, the embedding-cache keys) then hold the resolved precision, so an fp32 run under ``auto``
keeps the fingerprints that an explicit ``32-true`` has, and a bf16 run gets its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

AUTO = "auto"
Kind = Literal["trainer", "encode"]
# What bf16 and fp32 are called by each consumer: Lightning's Trainer, or our encoders (eval, mining).
NAMES: dict[Kind, tuple[str, str]] = {"trainer": ("bf16-mixed", "32-true"), "encode": ("bf16", "32-true")}
NATIVE_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str] | None:
    """The CPU feature flags the kernel reports (Linux), or None where there is no such file."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def native_bf16_cpu() -> bool:
    """True when this CPU computes bf16 natively: AMX or AVX512-BF16 in the kernel's flags (Linux); elsewhere,
    oneDNN's own bf16 check. Without them bf16 matmuls are emulated (measured about 4x slower than float32 for
    MiniLM-sized linear layers on an AVX2 machine)."""
    flags = cpu_flags()
    if flags is not None:
        return any(flag in flags for flag in NATIVE_FLAGS)
    is_supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(is_supported()) if is_supported is not None else False


def bf16_native(device_type: str) -> bool:
    """Native bf16 on ``device_type`` (``cpu`` or ``cuda``)."""
    if device_type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return device_type == "cpu" and native_bf16_cpu()


def resolve_precision(value: str, device_type: str, kind: Kind) -> str:
    """``auto`` -> the bf16 or fp32 name of ``kind`` on ``device_type``; any other value is returned as it is."""
    if str(value) != AUTO:
        return str(value)
    bf16, fp32 = NAMES[kind]
    return bf16 if bf16_native(device_type) else fp32


def trainer_device_type(accelerator: str = "cpu") -> str:
    """Where the Trainer computes: ``cuda`` for a gpu/cuda accelerator (or ``auto`` with a GPU), else ``cpu``."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


def encode_device_type() -> str:
    """Where encoders compute outside the Trainer (evaluation, dense mining): the GPU when there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"
