#!/usr/bin/env bash
# Wheels for the lent GPU machine, whose image has torch, transformers, lightning, h5py, rich and pillow but
# not `datasets` (which bench/extraction_pipeline.py needs through PromptDataModule). Downloads them into .whl/
# (git-ignored) for CPython 3.12 / manylinux x86_64; the device call then carries .whl and starts with
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#     .whl/*.whl && export PYTHONPATH=/tmp/site || exit;
# datasets 5.2 wants pyarrow >= 24: if `import datasets` fails there on pyarrow, run this with WITH_PYARROW=1
# (adds pyarrow 26.0.1, about 45 MB of the 64 MiB a call may carry).
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19)
[[ "${WITH_PYARROW:-0}" == 1 ]] && packages+=(pyarrow==26.0.1)
rm -rf .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "${packages[@]}"
ls -la .whl
