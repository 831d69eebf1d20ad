#!/usr/bin/env bash
# Every benchmark for one kind of machine; figures merged into bench/results/<machine>.json.
#   bash bench/run_all.sh cpu                     # ~25 min on 2 cores (SmolLM2 real weights + tiny shape; generation ~12 of it)
#   bash bench/run_all.sh gpu                     # ~14 min on an H100 (LLaVA-1.5-7B shape, random bf16)
#   bash bench/run_all.sh gpu extraction          # ~2.5 min of it (forward alone, eager and compiled)
#   bash bench/run_all.sh gpu pipeline            # ~3 min of it (l2s extract end to end, loader workers)
#   bash bench/run_all.sh gpu generation          # ~8 min of it
# PYTHON overrides the interpreter (default: .venv/bin/python from scripts/setup.sh when present, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
kind="${1:-cpu}"
part="${2:-all}"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
run() { echo "+ $*" >&2; "$PYTHON" "$@"; }

case "$kind" in
  cpu)
    # One torch thread: steady figures on a shared 2-core machine (2 threads stall under contention).
    export OMP_NUM_THREADS=1
    if [[ "$part" == all || "$part" == extraction ]]; then
      run bench/extraction.py --model smollm2 --threads 1 --batch-size auto --n-samples 32 --n-reference 8
      run bench/extraction.py --shape tiny --threads 1 --batch-size auto --n-samples 32 --n-reference 8
      # a template suffix (safety_paper style), L' = 29: the plain prompt's tail on X's cache vs a pass of its own
      run bench/extraction.py --model smollm2 --threads 1 --batch-size 16 --n-samples 32 --n-reference 4 --text-tokens 300 --suffix-tokens 20 --layer-context 29
    fi
    if [[ "$part" == all || "$part" == pipeline ]]; then
      # preparing one LLaVA-1.5 sample (TYPO render, chat template, tokenizer, CLIP 336 px) on one core
      run bench/extraction_pipeline.py --shape llava-1.5-7b --prepare-only --n-samples 128
      # l2s extract end to end on the tiny shape: encoding in the main process vs in one loader worker
      run bench/extraction_pipeline.py --shape tiny --threads 1 --workers 0,1 --n-samples 128 --batch-size 8
    fi
    if [[ "$part" == all || "$part" == generation ]]; then
      run bench/generation.py --model smollm2 --threads 1 --batch-sizes 1,8 --new-tokens 16 --paths dynamic,static --repeats 15
      # l2s predict --model.compile true end to end on the tiny shape: the product's cache policy vs transformers' defaults
      run bench/generation_predict.py --shape tiny --threads 1 --n-samples 120 --policies ours,per-batch,per-call
    fi
    ;;
  gpu)
    if [[ "$part" == all || "$part" == extraction ]]; then
      # eager product path: auto batch (from free memory) and fixed 16/32, reference = batch 1, 3 full forwards
      run bench/extraction.py --shape llava-1.5-7b --batch-size auto,16,32 --n-samples 256 --n-reference 16 --phases
      # experiment: the same with each decoder block's forward compiled (first batch pays the compile)
      run bench/extraction.py --shape llava-1.5-7b --batch-size auto --n-samples 256 --n-reference 8 --compile-layers --phases
      # the paper's safety setting (L* = 15, L' = 30) with a 20-token template suffix: shared prompt vs separate context pass
      run bench/extraction.py --shape llava-1.5-7b --batch-size auto --n-samples 256 --n-reference 8 --suffix-tokens 20 --layer-context 30
    fi
    if [[ "$part" == all || "$part" == pipeline ]]; then
      # l2s extract end to end: encoding in the main process, in 8 loader workers, and (earlier path) in the step
      run bench/extraction_pipeline.py --shape llava-1.5-7b --workers 0,8 --n-samples 512 --compile
    fi
    if [[ "$part" == all || "$part" == generation ]]; then
      # static + compile with one graph per batch size, as the README's figures (bench/device_run.sh generate-static)
      run bench/generation.py --shape llava-1.5-7b --paths dynamic,static --batch-sizes 1,16,64 --new-tokens 128 --repeats 5 --dynamic-repeats 3 --compile-dynamic off
      # l2s predict --model.compile true end to end, steered: the product's cache policy vs transformers' defaults
      run bench/generation_predict.py --shape llava-1.5-7b --n-samples 384
    fi
    ;;
  *)
    echo "usage: bash bench/run_all.sh cpu|gpu [all|extraction|pipeline|generation]" >&2
    exit 2
    ;;
esac
