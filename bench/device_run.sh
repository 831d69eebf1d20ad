#!/usr/bin/env bash
# 7B-shape GPU figures on the lent machine (`device` tool, one call of at most 10 minutes; a lease is 15 minutes
# of device time, start included). Each named run has a time cap, so one slow run cannot take the others' time;
# its log goes to $OUT/<name>.log and the merged figures (bench/results/*.json) to $OUT.
#   bash bench/device_run.sh                               # extract-compiled generate-predict (the runs not yet measured), at most 9 min
#   bash bench/device_run.sh extract-compiled pipeline     # chosen runs (names and caps below)
# `pipeline`, `generate-predict` and `sweep` need `datasets`, which the machine lacks: run bench/device_wheels.sh here first and carry .whl;
# the wheels are installed when present. The whole GPU set without caps is `bash bench/run_all.sh gpu`.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/l2s-bench-out}"
mkdir -p "$out"
started=$(mktemp)  # figures files written after it are copied to $out
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python="${PYTHON:-python3}"
shape=(--shape "${BENCH_SHAPE:-llava-1.5-7b}")  # BENCH_SHAPE=tiny: a quick check of this script on a CPU
extract=(bench/extraction.py "${shape[@]}" --batch-size auto --n-samples 256 --n-reference 8)

run_named() {  # the bench run of NAME, with its cap in seconds
  case "$1" in
    # compiled blocks (target >= 100 samples/s), checked against the float32 truth; the first batches compile
    extract-compiled) capped 210 "$1" "${extract[@]}" --compile-layers ;;
    # eager, the baseline of extract-compiled
    extract-eager) capped 90 "$1" "${extract[@]}" ;;
    # the paper's safety setting (L* = 15, L' = 30), 20-token template suffix: shared prompt vs a separate pass
    extract-suffix) capped 90 "$1" "${extract[@]}" --suffix-tokens 20 --layer-context 30 --no-float32-check ;;
    # static cache + compile, one graph per batch size, plain vs steered (targets 113 / 1210 / 2394 tok/s, <= 2 %)
    generate-static) capped 330 "$1" bench/generation.py "${shape[@]}" --paths static --compile-dynamic off \
      --batch-sizes 64,16,1 --new-tokens 128 --repeats 5 ;;
    # l2s extract end to end (Trainer.predict, loader workers, HDF5 writer) against the forward alone
    pipeline) capped 240 "$1" bench/extraction_pipeline.py "${shape[@]}" --workers 0,8 --n-samples 512 --compile ;;
    # l2s predict --model.compile true end to end, steered, batch 64: the product's cache policy vs transformers' defaults
    generate-predict) capped 330 "$1" bench/generation_predict.py "${shape[@]}" --n-samples 384 ;;
    # l2s sweep's runs (no steering, alpha 1 / 2 / 4), compiled: each run loading the 7B model vs one ModelCache
    sweep) capped 300 "$1" bench/sweep_runs.py "${shape[@]}" ;;
    *) return 2 ;;
  esac
}
runs=(extract-compiled extract-eager extract-suffix generate-static pipeline generate-predict sweep)
names=("$@")
[[ ${#names[@]} -gt 0 ]] || names=(extract-compiled generate-predict)
for name in "${names[@]}"; do  # all names checked before anything runs
  [[ " ${runs[*]} " == *" $name "* ]] || { echo "unknown run $name: one of ${runs[*]}" >&2; exit 2; }
done

capped() {  # capped SECONDS NAME SCRIPT ARGS...: one bench run, killed after SECONDS; prints its figures
  local seconds=$1 name=$2
  shift 2
  echo "+ $name (at most ${seconds} s): $*"
  local start=$SECONDS
  timeout -k 10 "$seconds" "$python" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  echo "  rc $rc after $((SECONDS - start)) s"
  grep '^{' "$out/$name.log" | "$python" -c '
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    if "key" in r:
        print("  ", r["key"], r.get("figure"), r.get("value"), r.get("unit") or "", "equal" if r.get("equal") else "")' || true
  find bench/results -name '*.json' -newer "$started" -exec cp {} "$out/" \;  # this machine's file only
  return "$rc"
}

if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing .whl failed" >&2; exit 1; }
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader || true
"$python" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
status=0
for name in "${names[@]}"; do
  run_named "$name" || status=$?
done
exit "$status"
