"""Which device trains and in which precision: chosen from the hardware, never assumed.

The same config must train on a laptop, an AMD server without bf16 instructions, an Intel server with AVX512-BF16
or AMX, and a GPU. ``precision="auto"`` (the default of ``ContinualTrainingArguments``) picks:

| device | auto | why |
|---|---|---|
| CUDA GPU with bf16 (Ampere and newer) | ``bf16`` | half the activation memory, tensor cores, no loss scaling |
| older CUDA GPU | ``fp16`` | tensor cores; ``Trainer`` adds the loss scaler |
| CPU with AMX tiles (Intel Sapphire Rapids and newer) that oneDNN uses | ``bf16`` | oneDNN's AMX bf16 kernels |
| CPU with AVX512-BF16 but no AMX | ``fp32`` | bf16 autocast measured slower: 1.25x fp32's time per training step of the demo (``bench/train_step_precision.py``, 2-core Intel Xeon with AVX512-BF16) |
| any other CPU (AVX2 only, ARM, oneDNN capped by ``ONEDNN_MAX_CPU_ISA``) | ``fp32`` | bf16 there is emulated, and some layers (``torch.nn.LSTM``) have no bf16 kernel at all |
| Apple ``mps``, Intel ``xpu`` | ``fp32`` | not chosen automatically; ask for ``bf16``/``fp16`` to try it |

A precision asked for by name (``bf16``/``fp16``/``fp32``, or transformers' ``--bf16``/``--fp16`` flags) is used as
asked, unless the device cannot run it: then ``PrecisionError`` stops the run before any work, with the reason,
instead of a oneDNN or CUDA traceback at the first training step.

Mixed precision means ``torch.autocast`` around the base model's forward (what ``Trainer`` does). The prompt
encoder is always run in float32 inside it (see ``TaskPromptEncoder``): it is a few MB and its LSTM has no bf16
kernel on CPUs without bf16 hardware.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch

from peft_continual.errors import PrecisionError, allowed
from peft_continual.machine import cpu_bf16_support, cpu_name, device_type


class Precision(str, Enum):
    """Training precision: ``auto`` (chosen by the hardware), or one asked for by name."""

    AUTO = "auto"
    BF16 = "bf16"
    FP16 = "fp16"
    FP32 = "fp32"


@dataclass(frozen=True)
class PrecisionChoice:
    """The outcome of ``choose_precision``: where training runs, in which precision, and why.

    Examples:
        >>> choice = PrecisionChoice("cpu", Precision.FP32, "asked for fp32")
        >>> choice.autocast_dtype is None, str(choice)
        (True, 'training precision: fp32 on cpu (asked for fp32)')
    """

    device: str
    precision: Precision
    reason: str

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The dtype of ``torch.autocast`` around the base model, ``None`` for plain fp32."""
        return {Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}.get(self.precision)

    def __str__(self) -> str:
        return f"training precision: {self.precision.value} on {self.device} ({self.reason})"


def choose_precision(requested: Precision | str = Precision.AUTO, device: str | None = None) -> PrecisionChoice:
    """Choose the training precision for ``device`` (default: the device ``Trainer`` will use).

    Args:
        requested: ``auto``, ``bf16``, ``fp16`` or ``fp32``.
        device: ``cuda``, ``cpu``, ``mps``, ``xpu``; ``None`` asks ``device_type()``.

    Returns:
        The choice, with the reason in words (one log line: ``str(choice)``).

    Raises:
        PrecisionError: ``requested`` is unknown, or the device cannot run it (bf16 on a GPU without bf16 or on a CPU
            whose oneDNN has no bf16; fp16 on a CPU).

    Examples:
        >>> choose_precision("fp32", "cpu").precision.value
        'fp32'
    """
    try:
        requested = Precision(requested)
    except ValueError:
        raise PrecisionError(f"precision {requested!r} is not one of {allowed(p.value for p in Precision)}") from None
    device = device or device_type()
    if device == "cuda":
        return _choose_on_cuda(requested)
    if device == "cpu":
        return _choose_on_cpu(requested)
    if requested is Precision.AUTO:
        return PrecisionChoice(device, Precision.FP32, f"auto: mixed precision is not chosen automatically on {device}")
    return PrecisionChoice(device, requested, f"asked for {requested.value}")


def _choose_on_cuda(requested: Precision) -> PrecisionChoice:
    name = torch.cuda.get_device_name()
    has_bf16 = torch.cuda.is_bf16_supported()
    if requested is Precision.AUTO:
        if has_bf16:
            return PrecisionChoice("cuda", Precision.BF16, f"auto: {name} supports bf16")
        return PrecisionChoice("cuda", Precision.FP16, f"auto: {name} has no bf16, fp16 with loss scaling")
    if requested is Precision.BF16 and not has_bf16:
        raise PrecisionError(
            f"bf16 was asked for, but the GPU {name} does not support it (it needs compute capability 8.0, Ampere, "
            "or newer). Use --precision auto (fp16 on this GPU) or --precision fp16/fp32."
        )
    return PrecisionChoice("cuda", requested, f"asked for {requested.value} on {name}")


def _choose_on_cpu(requested: Precision) -> PrecisionChoice:
    support = cpu_bf16_support()
    where = f"CPU {cpu_name()}: {support.describe()}"
    if requested is Precision.AUTO:
        if support.amx and support.onednn:
            return PrecisionChoice("cpu", Precision.BF16, f"auto: {where}")
        return PrecisionChoice("cpu", Precision.FP32, f"auto: {where}; fp32 is faster and exact without AMX")
    if requested is Precision.BF16 and not support.onednn:
        raise PrecisionError(
            f"bf16 was asked for (--precision bf16 or --bf16 true), but on this CPU ({cpu_name()}) there is "
            f"{support.describe()}. bf16 would be emulated, slower "
            "than fp32, and some layers (torch.nn.LSTM) have no bf16 kernel at all on such a CPU. Use "
            "--precision auto (fp32 here) or --precision fp32."
        )
    if requested is Precision.FP16:
        raise PrecisionError(
            f"fp16 was asked for (--precision fp16 or --fp16 true), but training runs on the CPU ({cpu_name()}): "
            "fp16 mixed precision needs a CUDA GPU. Use --precision auto, bf16 or fp32."
        )
    return PrecisionChoice("cpu", requested, f"asked for {requested.value}; {where}")
