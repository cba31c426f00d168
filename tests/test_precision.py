"""Device and precision chosen from the hardware: the rule on every kind of machine (probes faked), and the
training arguments that apply it."""

from __future__ import annotations

import pytest
import torch
from transformers import HfArgumentParser

from peft_continual import machine, precision
from peft_continual.errors import ConfigError, PrecisionError
from peft_continual.machine import CpuBf16Support
from peft_continual.precision import Precision, choose_precision
from peft_continual.training import ContinualTrainingArguments

AMX = CpuBf16Support(avx512_bf16=True, amx=True, onednn=True)
AVX512_BF16 = CpuBf16Support(avx512_bf16=True, amx=False, onednn=True)
AVX2_ONLY = CpuBf16Support(avx512_bf16=False, amx=False, onednn=False)


@pytest.fixture
def cpu_with(monkeypatch):
    """Make the CPU report the given bf16 support, and training run on the CPU."""

    def fake(support: CpuBf16Support) -> None:
        monkeypatch.setattr(precision, "cpu_bf16_support", lambda: support)
        monkeypatch.setattr(precision, "device_type", lambda use_cpu=False: "cpu")
        monkeypatch.setattr(precision, "cpu_name", lambda: "Test CPU 9000")

    return fake


@pytest.fixture
def gpu_with(monkeypatch):
    def fake(bf16: bool) -> None:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "Test GPU")
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)

    return fake


@pytest.mark.parametrize(
    ("support", "expected"), [(AMX, "bf16"), (AVX512_BF16, "fp32"), (AVX2_ONLY, "fp32")], ids=["amx", "avx512", "avx2"]
)
def test_auto_on_a_cpu_takes_bf16_only_with_amx(cpu_with, support, expected):
    cpu_with(support)
    choice = choose_precision("auto")
    assert (choice.device, choice.precision.value) == ("cpu", expected)
    assert "Test CPU 9000" in choice.reason and str(choice).startswith(f"training precision: {expected} on cpu (auto")


def test_bf16_asked_for_on_a_cpu_without_onednn_bf16_is_refused_naming_the_cpu_and_the_cap(cpu_with, monkeypatch):
    cpu_with(AVX2_ONLY)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    with pytest.raises(PrecisionError) as refused:
        choose_precision("bf16")
    message = str(refused.value)
    assert "Test CPU 9000" in message and "ONEDNN_MAX_CPU_ISA=AVX2" in message and "--precision fp32" in message


def test_bf16_asked_for_runs_where_onednn_has_bf16_even_without_amx(cpu_with):
    cpu_with(AVX512_BF16)
    assert choose_precision("bf16").precision is Precision.BF16


def test_fp16_on_a_cpu_is_refused_and_fp32_always_runs(cpu_with):
    cpu_with(AMX)
    with pytest.raises(PrecisionError, match="needs a CUDA GPU"):
        choose_precision("fp16")
    assert choose_precision("fp32").autocast_dtype is None


@pytest.mark.parametrize(("bf16", "expected"), [(True, Precision.BF16), (False, Precision.FP16)])
def test_auto_on_a_gpu_is_bf16_where_supported_else_fp16(gpu_with, bf16, expected):
    gpu_with(bf16)
    choice = choose_precision("auto", "cuda")
    assert choice.precision is expected and "Test GPU" in choice.reason


def test_bf16_on_a_gpu_without_it_is_refused(gpu_with):
    gpu_with(False)
    with pytest.raises(PrecisionError, match="Test GPU does not support it"):
        choose_precision("bf16", "cuda")


def test_other_accelerators_stay_fp32_unless_asked_and_unknown_names_are_refused():
    assert choose_precision("auto", "mps").precision is Precision.FP32
    assert choose_precision("bf16", "mps").precision is Precision.BF16
    with pytest.raises(PrecisionError, match="'bf32' is not one of"):
        choose_precision("bf32", "cpu")


def test_device_type_follows_use_cpu_and_accelerates_variable(monkeypatch):
    assert machine.device_type(use_cpu=True) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert machine.device_type() == "cuda"
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    assert machine.device_type() == "cpu"


# ----------------------------------------------------------------------------- ContinualTrainingArguments


def arguments(**settings) -> ContinualTrainingArguments:
    return ContinualTrainingArguments(output_dir="unused", report_to=[], **settings)


def test_the_arguments_apply_the_choice_and_set_use_cpu_for_bf16_on_a_cpu(cpu_with):
    cpu_with(AMX)
    args = arguments()
    assert (args.bf16, args.fp16, args.use_cpu) == (True, False, True)
    assert args.precision_choice.precision is Precision.BF16
    cpu_with(AVX2_ONLY)
    args = arguments()
    assert (args.bf16, args.fp16) == (False, False) and args.precision_choice.precision is Precision.FP32


def test_transformers_bf16_flag_is_a_request_by_name_and_is_refused_where_it_cannot_run(cpu_with):
    cpu_with(AVX512_BF16)
    assert arguments(bf16=True).precision_choice.reason.startswith("asked for bf16")
    cpu_with(AVX2_ONLY)
    with pytest.raises(PrecisionError, match="bf16 was asked for"):
        arguments(bf16=True)


def test_contradicting_flags_are_refused():
    with pytest.raises(ConfigError, match="--bf16 true contradicts --precision fp32"):
        arguments(bf16=True, precision="fp32")
    with pytest.raises(ConfigError, match="--precision 'half' is not one of"):
        arguments(precision="half")


def test_precision_is_a_command_line_flag_with_help(cpu_with):
    cpu_with(AVX2_ONLY)
    parser = HfArgumentParser(ContinualTrainingArguments)
    (args,) = parser.parse_args_into_dataclasses(
        ["--output_dir", "unused", "--precision", "fp32", "--report_to", "none"]
    )
    assert args.precision == "fp32" and not args.bf16
    assert "fp32 on other CPUs" in " ".join(parser.format_help().split())
