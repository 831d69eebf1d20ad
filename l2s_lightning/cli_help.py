"""What ``l2s <command> --help`` prints: the command's own usage line, a one-paragraph description and its
options, short: types as metavars, no reST markup; :class:`ShortHelpFormatter` also cuts each option's help to its
first sentence."""

from __future__ import annotations

import argparse
import re
import types
import typing
from typing import Any

from jsonargparse import ActionConfigFile, DefaultHelpFormatter

from l2s_lightning.internals import is_group_file_option

# the usage line of a command that parses a config (%(prog)s: "l2s extract")
USAGE = "%(prog)s [-h] [--config FILE] [--print_config] [--OPTION VALUE ...]"

_ROLE = re.compile(r":\w+:`~?([^`]+)`")  # :class:`X` -> X
_PREFIX = re.compile(r"^`l2s \w+`:\s*")  # "`l2s run`: the whole loop" -> "the whole loop"
_SENTENCE_END = re.compile(r"(?<!e\.g)(?<!i\.e)\.\s")
_MODULE_PATH = re.compile(r"\b(?:\w+\.)+(?=\w+\b)")  # "a.b.Name" -> "Name"
_BUILTIN_HELP = {
    "--config": "YAML config; the options after it override it.",
    "--print_config": "print the resulting config as YAML and exit.",
    "--seed_everything": "the seed; true: a random one.",
}


def plain(text: str) -> str:
    """``text`` without reST markup: roles dropped, double backquotes made single."""
    return _ROLE.sub(r"\1", text).replace("``", "`")


def describe(doc: str | None) -> str:
    """The description of a command: the first paragraph of its module docstring, without the
    ``"`l2s <command>`: "`` it starts with."""
    first = " ".join((doc or "").strip().split("\n\n")[0].split())
    text = _PREFIX.sub("", plain(first))
    return text[:1].upper() + text[1:]


def drop_asides(text: str) -> str:
    """``text`` without its parenthesised remarks: a "(" after a space up to its ")" (``f(x)`` stays); unchanged if
    a remark is not closed."""
    kept: list[str] = []
    depth = 0
    for i, char in enumerate(text):
        if char == "(" and (depth or text[i - 1 : i].isspace()):
            if not depth and kept:
                kept.pop()  # the blank before the remark
            depth += 1
        elif char == ")" and depth:
            depth -= 1
        elif not depth:
            kept.append(char)
    return text if depth else "".join(kept)


def gist(text: str) -> str:
    """The first sentence of a help text, without its parenthesised remarks."""
    return _SENTENCE_END.split(drop_asides(text), maxsplit=1)[0].rstrip(".") + "."


def tidy_help(parser: Any) -> None:
    """Shorter help for jsonargparse's ``--config`` and ``--print_config`` and Lightning's ``--seed_everything``;
    group titles (class docstrings) without reST markup."""
    for action in parser._actions:
        for option in set(action.option_strings) & set(_BUILTIN_HELP):
            action.help = _BUILTIN_HELP[option]
    for group in parser._action_groups:
        group.title = plain(group.title or "")


def metavar(typehint: Any) -> str:
    """``INT``, ``FLOAT`` or ``STR`` for such a type (or its optional form), else ``VALUE``."""
    if typing.get_origin(typehint) in (typing.Union, types.UnionType):
        kinds = [arg for arg in typing.get_args(typehint) if arg is not type(None)]
        typehint = kinds[0] if len(kinds) == 1 else None
    return typehint.__name__.upper() if typehint in (int, float, str) else "VALUE"


class HelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help formatter with the type as the metavar (``--data.batch_size INT``) rather than in the
    help text, and without reST markup."""

    def __init__(self, prog: str, **kwargs: Any) -> None:
        super().__init__(prog, **{"max_help_position": 32, **kwargs})

    def _get_type_str(self, action: argparse.Action) -> str | None:
        return None

    def _get_default_metavar_for_optional(self, action: argparse.Action) -> str:
        if isinstance(action, ActionConfigFile):
            return "FILE"
        return metavar(getattr(action, "_typehint", action.type))

    def _expand_help(self, action: argparse.Action) -> str:
        return plain(super()._expand_help(action))


class ShortHelpFormatter(HelpFormatter):
    """:class:`HelpFormatter` with each option's help text cut to its :func:`gist`, no ``default: null`` and no
    ``--<group> FILE`` options (a group's settings in a YAML file of their own)."""

    def _format_action(self, action: argparse.Action) -> str:
        return "" if is_group_file_option(action) else super()._format_action(action)

    def _expand_help(self, action: argparse.Action) -> str:
        return super()._expand_help(action).replace(" (default: null)", "").replace(", default: null)", ")")

    def _get_help_string(self, action: argparse.Action) -> str:
        text, own = super()._get_help_string(action), action.help or ""
        if not own or getattr(action, "_jsonargparse_preexpanded_help", False) or not text.startswith(own):
            return text
        rest = _MODULE_PATH.sub("", text[len(own) :])  # known subclasses by name, as they can be given
        return gist(own) + rest
