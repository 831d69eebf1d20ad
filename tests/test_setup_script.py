"""scripts/setup.sh on the checkout's .venv, already set up (CI and the README run it before the tests): every
step says it is already done, and pip is never called."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

FAKE_PIP = """import pathlib, sys
pathlib.Path(__file__).with_name("called").write_text(" ".join(sys.argv))
sys.exit("pip was called: " + " ".join(sys.argv))
"""


def test_second_setup_run_installs_nothing(tmp_path: Path) -> None:
    assert (REPO / ".venv" / "bin" / "python").is_file(), "no .venv in the checkout: run `bash scripts/setup.sh`"
    fake = tmp_path / "shadow" / "pip"  # found before the real pip by `python -m pip`: any install fails
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "__main__.py").write_text(FAKE_PIP)
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONHOME"}}
    env["PYTHONPATH"] = str(tmp_path / "shadow")
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "setup.sh")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    output = result.stdout + result.stderr
    hint = "the .venv is out of date (pyproject.toml or setup.sh changed): run `bash scripts/setup.sh`"
    assert result.returncode == 0 and not (fake / "called").exists(), f"{hint}\n{output}"
    steps = [line for line in result.stdout.splitlines() if not line.startswith("set-up done: ")]
    assert len(steps) == 4 and all(line.startswith("ok: ") for line in steps), output
    assert "installing" not in output and "warning" not in output.lower(), output
    assert result.stdout.splitlines()[-1].startswith("set-up done: torch "), output
