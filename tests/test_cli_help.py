"""`l2s <command> --help`: the command's own usage line and description, its options first, two screens at most;
the Trainer's options behind `--help-trainer`, still settable; errors point to the command's own help."""

from __future__ import annotations

from importlib import import_module

import pytest

from l2s_lightning.cli import COMMANDS, main
from l2s_lightning.cli_help import describe, drop_asides, gist
from l2s_lightning.training.cli import load_config as load_fit_config

MAX_LINES = 120  # two screens
# a key option of each command, which must come before any Trainer option
KEY_OPTION = {
    "extract": "--model.layer_steer",
    "fit": "--method",
    "predict": "--model.method",
    "evaluate": "--out",
    "sweep": "--steerer",
    "run": "--out_dir",
    "tune": "--run_config",
}
STAGES = ("extract", "fit", "predict")


def _squeezed(text: str) -> str:
    """``text`` without blanks (help output is wrapped, also at hyphens)."""
    return "".join(text.split())


def _options(text: str) -> list[str]:
    """The options a help text lists, in order."""
    return [line.split()[0].rstrip(",") for line in text.splitlines() if line.startswith("  -")]


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out


@pytest.fixture(autouse=True)
def _terminal_80_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")


@pytest.mark.parametrize("command", list(KEY_OPTION))
def test_help_is_the_commands_own(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys, command, "--help")
    lines = text.splitlines()
    assert lines[0].startswith(f"usage: l2s {command} "), lines[0]
    module = import_module(COMMANDS[command][0].split(":")[0])
    assert _squeezed(describe(module.__doc__)) in _squeezed(text)  # our description, not Lightning's
    assert "Lightning Trainer command line tool" not in text
    assert len(lines) <= MAX_LINES, f"{command}: {len(lines)} lines"
    assert KEY_OPTION[command] in _options(text)
    assert not [option for option in _options(text) if option.startswith("--trainer.")]  # behind --help-trainer


@pytest.mark.parametrize("command", STAGES)
def test_stage_help_has_no_optimizer_and_points_to_the_trainer(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = _help(capsys, command, "--help")
    assert f"l2s {command} --help-trainer" in " ".join(text.split())
    full = _help(capsys, command, "--help-full")  # every option, ours first
    assert "--optimizer" not in text + full and "--lr_scheduler" not in text + full
    assert _options(full).index(KEY_OPTION[command]) < _options(full).index("--trainer.devices")
    trainer = _options(_help(capsys, command, "--help-trainer"))
    assert "--trainer.devices" in trainer and "--trainer.max_epochs" in trainer
    assert KEY_OPTION[command] not in trainer


def test_trainer_options_are_still_settable() -> None:
    config = load_fit_config("configs/fit/smollm2.yaml", args=["--trainer.max_epochs", "3"])
    assert config.trainer["max_epochs"] == 3
    config = load_fit_config("configs/fit/smollm2.yaml", overrides={"trainer.max_epochs": 4})
    assert config.trainer["max_epochs"] == 4


@pytest.mark.parametrize("command", ["extract", "sweep"])
def test_a_bad_option_points_to_the_commands_own_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--no_such_option", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"l2s {command} --help" in err and err.startswith(f"usage: l2s {command} ")


def test_l2s_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert all(f"  {command} " in text for command in KEY_OPTION)
    assert "l2s <command> --help" in text


def test_gist_keeps_the_first_sentence_without_remarks() -> None:
    assert drop_asides("a (b (c) d) e f(x) (g") == "a (b (c) d) e f(x) (g"  # a remark left open: unchanged
    assert drop_asides("a (b (c) d) e f(x)") == "a e f(x)"
    assert gist("rows per batch (or `auto`), e.g. 8. More on it.") == "rows per batch, e.g. 8."
