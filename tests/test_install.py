"""A regular (non-editable) install of a built wheel works away from the checkout: the CLI starts, and every
template set and evaluation resource is found inside the installed package."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RESOURCES = REPO / "l2s_lightning" / "resources"
# what a build of the project reads, copied so the build leaves nothing behind in the checkout
BUILD_INPUTS = ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "setup.py", "setup.cfg")

CHECK_INSTALLED = """
import json, sys
import l2s_lightning
from l2s_lightning.evaluation.resources import PhraseMatcher, read_lines, resource_text
from l2s_lightning import templates

prefix, expected = sys.argv[1], json.loads(sys.argv[2])
assert l2s_lightning.__file__.startswith(prefix), l2s_lightning.__file__
finders = [getattr(f, "__module__", "") for f in sys.meta_path]  # finder classes and instances
assert not [m for m in finders if "editable" in m], finders
for name in expected["templates"]:
    loaded = templates.load_templates(name)
    assert loaded.behaviours and loaded.source.startswith(prefix), loaded.source
assert templates.template_names() == expected["templates"], templates.template_names()
for name in expected["evaluation"]:
    assert resource_text(name).strip(), name
assert "{" in resource_text("judge_unsafe_chat.txt")
assert PhraseMatcher.from_resource("refusal_phrases.txt").contains("Sorry, I can't help with that.")
assert read_lines("ed_phrases.txt")
print("installed:", l2s_lightning.__file__)
"""


def _run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}"
    return result


def _build_wheel(tmp: Path) -> Path:
    """A wheel built from a copy of the package and its build files."""
    missing = [name for name in ("setuptools", "pip") if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"cannot build a wheel of the project: {missing} not installed in {sys.prefix}")
    source = tmp / "source"
    shutil.copytree(REPO / "l2s_lightning", source / "l2s_lightning")
    for name in BUILD_INPUTS:
        if (REPO / name).is_file():
            shutil.copy2(REPO / name, source / name)
    _run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        tmp / "dist",
        source,
        cwd=tmp,
    )
    (wheel,) = (tmp / "dist").glob("l2s_lightning-*.whl")
    return wheel


def _bundled() -> dict[str, list[str]]:
    """The resource files of the checkout: template set names and evaluation file names."""
    return {
        "templates": sorted(p.stem for p in (RESOURCES / "templates").glob("*.yaml")),
        "evaluation": sorted(p.name for p in (RESOURCES / "evaluation").iterdir() if p.is_file()),
    }


def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    wheel = _build_wheel(tmp_path)
    expected = _bundled()
    assert {"safety", "safety_paper", "pope", "logodds_eval"} <= set(expected["templates"])
    names = zipfile.ZipFile(wheel).namelist()
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]
    for name in expected["templates"]:
        assert f"l2s_lightning/resources/templates/{name}.yaml" in names
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    # into the bare venv first, so pip sees no other install of the project (the checkout's editable one)
    _run(
        sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel, cwd=tmp_path
    )
    site = Path(
        _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path).stdout.strip()
    )
    # The dependencies, from this environment: a path named in a .pth file is added to sys.path but its own .pth
    # files (the editable finder of the checkout) are not run.
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "dependencies.pth").write_text("".join(f"{path}\n" for path in sorted(ours)))

    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"}}
    env["PYTHONNOUSERSITE"] = "1"
    work = tmp_path / "elsewhere"
    work.mkdir()
    checked = _run(python, "-c", CHECK_INSTALLED, str(site), json.dumps(expected), cwd=work, env=env)
    assert f"installed: {site}" in checked.stdout

    help_text = _run(venv / "bin" / "l2s", "extract", "--help", cwd=work, env=env).stdout
    assert "--data.templates" in help_text and "--model.layer_steer" in help_text, help_text[-2000:]
