#!/usr/bin/env bash
# The checks to run whenever a CUDA machine is lent (issue 18), in one call of under 8 minutes:
#
#   bash bench/gpu_check.sh [REPORT_DIR]        # default bench/results/gpu_check
#
# 1. the `gpu`-marked tests (the stacking matrix on CUDA; the bitsandbytes cases where bitsandbytes is installed);
# 2. bench/gpu_step.py: train step and generation, ours vs PEFT's P_TUNING and prompt tuning, bf16 and fp32;
# 3. short recipe runs on a small random model and generated data (bench/gpu_check_inputs.py: no download, no
#    ../shared/data): LoRA and the continual recipe on one GPU, the continual recipe under accelerate's FSDP config,
#    and, where there are 2 GPUs, the continual recipe in 2 DDP processes.
# Every part runs under `timeout`, and a failure does not stop the others: REPORT_DIR/report.md lists each part's
# status, time and the last lines of its output, under the device's name, with the package versions. On a machine
# without a GPU the same parts run on the CPU (the benchmark at a tenth of the size; bf16 only where oneDNN has it): a
# check that the script works, not a figure. Run from the repository root with the project's Python (`.venv/bin/python` if there is one).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
report_dir="${1:-bench/results/gpu_check}"
py="${PYTHON:-python3}"
[[ -x .venv/bin/python && -z "${PYTHON:-}" ]] && py=.venv/bin/python
mkdir -p "$report_dir"
report_dir="$(cd "$report_dir" && pwd)"
report="$report_dir/report.md"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false

gpus="$("$py" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)"
device="$("$py" -c 'import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU (CPU)")')"
{
    echo "# GPU check: $device"
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%MZ); commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "- GPUs: $gpus; CPU: $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)"
    echo "- versions: $("$py" -c 'import importlib.metadata as m
names = ["torch", "transformers", "peft", "accelerate", "bitsandbytes"]
def version(name):
    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return "absent"
print(", ".join(f"{n} {version(n)}" for n in names))')"
    echo
    echo "| part | status | seconds |"
    echo "|---|---|---|"
} > "$report"
details="$work/details.md"
: > "$details"

part() {  # part NAME SECONDS COMMAND...: run it, book its status and the tail of its output
    local name="$1" limit="$2"
    shift 2
    local started status
    started=$(date +%s)
    echo "== $name"
    timeout "$limit" "$@" > "$work/out.txt" 2>&1
    status=$?
    local seconds=$(( $(date +%s) - started ))
    local verdict=ok
    [[ $status -eq 124 ]] && verdict="timed out (${limit} s)"
    [[ $status -ne 0 && $status -ne 124 ]] && verdict="failed (exit $status)"
    echo "$verdict"
    echo "| $name | $verdict | $seconds |" >> "$report"
    { echo; echo "## $name"; echo; echo '```'; tail -n 25 "$work/out.txt"; echo '```'; } >> "$details"
}

"$py" bench/gpu_check_inputs.py "$work/inputs" > /dev/null 2>&1 || { echo "could not build the inputs"; exit 1; }
inputs="$work/inputs"
common=(--tasks "$inputs/tasks.yaml" --data_dir "$inputs/data" --model "$inputs/model" --disable_tqdm true)

part "gpu-marked tests" 240 "$py" -m pytest -m gpu -q -p no:cacheprovider -o addopts="" --continue-on-collection-errors tests
# bf16 on a CPU without it in oneDNN (an AMD EPYC, AVX2 only) is emulated and slower than the part's limit.
bf16="$("$py" -c 'import torch
from peft_continual.machine import cpu_bf16_support
print("yes" if torch.cuda.is_available() or cpu_bf16_support().onednn else "no")' 2>/dev/null || echo no)"
if [[ "$bf16" == yes ]]; then
    part "train step and generation, bf16" 90 "$py" bench/gpu_step.py --dtype bfloat16 --out "$report_dir/gpu_step_bf16.json"
else
    echo "| train step and generation, bf16 | skipped: no bf16 in oneDNN on this CPU | 0 |" >> "$report"
fi
part "train step and generation, fp32" 90 "$py" bench/gpu_step.py --dtype float32 --out "$report_dir/gpu_step_fp32.json"
part "LoRA recipe, one GPU" 60 "$py" recipes/lora.py --config recipes/configs/lora/smollm2_135m.yaml "${common[@]}" \
    --max_steps 10 --output_dir "$work/lora"
part "continual recipe, one GPU" 90 "$py" recipes/continual_p_tuning.py \
    --config recipes/configs/continual_p_tuning/smollm2_135m.yaml "${common[@]}" --round_max_steps 10 5 \
    --validation_records 8 --output_dir "$work/continual"
part "continual recipe, FSDP config" 90 "$py" -m accelerate.commands.launch \
    --config_file recipes/configs/accelerate/fsdp.yaml --num_processes 1 \
    recipes/continual_p_tuning.py --config recipes/configs/continual_p_tuning/smollm2_135m.yaml "${common[@]}" \
    --round_max_steps 10 5 --validation_records 8 --output_dir "$work/continual_fsdp"
if [[ "$gpus" -ge 2 ]]; then
    part "continual recipe, 2 DDP processes" 90 "$py" -m accelerate.commands.launch \
        --config_file recipes/configs/accelerate/ddp.yaml --num_processes 2 \
        recipes/continual_p_tuning.py --config recipes/configs/continual_p_tuning/smollm2_135m.yaml "${common[@]}" \
        --round_max_steps 10 5 --validation_records 8 --output_dir "$work/continual_ddp"
else
    echo "| continual recipe, 2 DDP processes | skipped: $gpus GPU(s) | 0 |" >> "$report"
fi

for bench in bf16 fp32; do
    [[ -f "$report_dir/gpu_step_$bench.json" ]] || continue
    "$py" - "$report_dir/gpu_step_$bench.json" >> "$report" <<'EOF'
import json, sys
result = json.load(open(sys.argv[1]))
print(f"\n### Train step and generation: {result['device']}, {result['dtype']}, batch 8 x {result['length']} tokens, "
      f"{result['model']}\n")
print("| method | step ms | generate ms | step / PEFT P_TUNING | generate / PEFT P_TUNING | peak MiB |")
print("|---|---|---|---|---|---|")
for r in result["rows"]:
    print(f"| {r['method']} | {r['step_ms']} | {r['generate_ms']} | {r['step_vs_peft_p_tuning']} | "
          f"{r['generate_vs_peft_p_tuning']} | {r['peak_memory_mib']} |")
EOF
done
cat "$details" >> "$report"
echo "report: $report"
! grep -q "| failed\|| timed out" "$report"
