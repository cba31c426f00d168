"""What this machine is: the device training will use, the CPU's name and bf16 support, the library versions.

Results files and log lines name the machine with these facts, because the same run differs between machines: a
2-core slot may be an Intel CPU with AVX512-BF16 one day and an AMD EPYC with AVX2 only the next.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

ISA_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")
"""Environment variables that cap the instruction sets oneDNN and ATen use (to make a CPU behave like a smaller one)."""


def device_type(use_cpu: bool = False) -> str:
    """The device type ``Trainer`` (accelerate's ``PartialState``) will train on: ``cuda``, ``xpu``, ``mps`` or
    ``cpu``; ``use_cpu`` (or ``ACCELERATE_USE_CPU``) forces ``cpu``."""
    if use_cpu or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return "xpu"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


@lru_cache
def cpu_name() -> str:
    """The CPU's model name (``lscpu``'s "Model name"), for log lines and results files."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith(("model name", "Model name")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


@dataclass(frozen=True)
class CpuBf16Support:
    """What this CPU and torch build offer for bf16.

    Attributes:
        avx512_bf16: the CPU has AVX512-BF16 instructions (``torch.cpu._is_avx512_bf16_supported()``).
        amx: the CPU has AMX tiles (``torch.cpu._is_amx_tile_supported()``), bf16 matrix units (Intel Sapphire
            Rapids and newer).
        onednn: oneDNN runs bf16 here (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``); false on CPUs without
            AVX512, and wherever ``ONEDNN_MAX_CPU_ISA`` caps oneDNN below that.
    """

    avx512_bf16: bool
    amx: bool
    onednn: bool

    def describe(self) -> str:
        """The support in words, for log lines and results files."""
        if not self.onednn:
            cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
            return "no bf16 support in oneDNN" + (f" (capped by ONEDNN_MAX_CPU_ISA={cap})" if cap else "")
        if self.amx:
            return "bf16 in oneDNN with AMX tiles"
        if self.avx512_bf16:
            return "bf16 in oneDNN with AVX512-BF16, no AMX"
        return "bf16 in oneDNN, emulated with AVX512 (no bf16 instructions)"


def cpu_bf16_support() -> CpuBf16Support:
    """Read this CPU's bf16 support from torch (private but long-standing ``torch.cpu``/``mkldnn`` probes)."""
    return CpuBf16Support(
        avx512_bf16=_probe(lambda: torch.cpu._is_avx512_bf16_supported()),
        amx=_probe(lambda: torch.cpu._is_amx_tile_supported()),
        onednn=_probe(lambda: torch.ops.mkldnn._is_mkldnn_bf16_supported()),
    )


def _probe(check) -> bool:
    try:
        return bool(check())
    except (AttributeError, RuntimeError):  # a torch build without the probe: assume the feature is absent
        return False


def machine_facts() -> dict[str, Any]:
    """The facts a results file records: CPU, threads, device, bf16 support, capping variables, versions.

    Examples:
        >>> {"cpu", "torch_threads", "device", "torch", "peft"} <= set(machine_facts())
        True
    """
    device = device_type()
    facts: dict[str, Any] = {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_bf16": cpu_bf16_support().describe(),
        "device": torch.cuda.get_device_name() if device == "cuda" else device,
    }
    facts |= {name: os.environ[name] for name in ISA_VARIABLES if os.environ.get(name)}
    facts["python"] = platform.python_version()
    for package in ("torch", "transformers", "peft", "accelerate", "bitsandbytes"):
        try:
            facts[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            facts[package] = None
    return facts


def machine_line(facts: Mapping[str, Any]) -> str:
    """``machine_facts()`` as one line for a ``results.md``, so the Markdown a reader quotes names the machine too.

    Examples:
        >>> machine_line({"cpu": "AMD EPYC 7B13", "cpu_count": 2, "torch_threads": 2, "cpu_bf16": "no bf16 support in "
        ...     "oneDNN", "device": "cpu", "ONEDNN_MAX_CPU_ISA": "AVX2", "python": "3.11.7", "torch": "2.13.0+cpu",
        ...     "transformers": "5.24.0", "peft": "0.21.2", "accelerate": "1.16.0", "bitsandbytes": None})
        'AMD EPYC 7B13 (2 CPUs, 2 torch threads; no bf16 support in oneDNN; ONEDNN_MAX_CPU_ISA=AVX2), device cpu; python 3.11.7, torch 2.13.0+cpu, transformers 5.24.0, peft 0.21.2, accelerate 1.16.0'
    """
    caps = [f"{name}={facts[name]}" for name in ISA_VARIABLES if facts.get(name)]
    cpu = "; ".join([f"{facts.get('cpu_count')} CPUs, {facts.get('torch_threads')} torch threads",
                     str(facts.get("cpu_bf16")), *caps])  # fmt: skip
    versions = ", ".join(f"{package} {facts[package]}" for package in ("python", "torch", "transformers", "peft",
                         "accelerate", "bitsandbytes") if facts.get(package))  # fmt: skip
    return f"{facts.get('cpu')} ({cpu}), device {facts.get('device')}; {versions}"
