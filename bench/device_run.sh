#!/usr/bin/env bash
# On the lent GPU machine (`device` tool), from the repository root: install the carried wheels (.whl/, made
# here by bench/device_wheels.sh), run parts of `run_all.sh gpu`, and leave the results in $OUT.
#   bash bench/device_run.sh extraction pipeline     # ~6 min on an H100
#   bash bench/device_run.sh generation              # ~8 min
# The device call names .whl in `carry`. Each part's log goes to $OUT/<part>.log; the merged figures to
# $OUT/results/.
set -uo pipefail
cd "$(dirname "$0")/.."
for part in "${@:-extraction}"; do
  case "$part" in extraction|pipeline|generation|all) ;; *) echo "unknown part $part: extraction, pipeline, generation or all" >&2; exit 2 ;; esac
done
out="${OUT:-/tmp/l2s-bench-out}"
mkdir -p "$out/results"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing .whl failed" >&2; exit 1; }
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHON="${PYTHON:-python3}"
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader || true
"$PYTHON" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
status=0
for part in "${@:-extraction}"; do
  bash bench/run_all.sh gpu "$part" > "$out/$part.log" 2>&1 || { status=$?; echo "part $part failed ($status)" >&2; }
  grep '^{' "$out/$part.log" | tail -n 40 || true
  cp bench/results/*.json "$out/results/" 2>/dev/null || true
done
exit "$status"
