"""Typed configs: dataclasses from parsed arguments, dotted overrides, and a plain record of a config."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from l2s_lightning.errors import L2SInputError

ConfigT = TypeVar("ConfigT")


def parse_dataclass_config(cls: type[ConfigT], prog: str, description: str | None, argv: list[str] | None) -> ConfigT:
    """A config dataclass from ``--config FILE`` and/or ``--field value`` arguments (jsonargparse); ``--help``
    shows the first paragraph of ``description`` (a module docstring) and the fields."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    from l2s_lightning.cli_help import USAGE, HelpFormatter, describe, tidy_help

    parser = ArgumentParser(prog=prog, usage=USAGE, description=describe(description), formatter_class=HelpFormatter)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_class_arguments(cls, nested_key=None)
    tidy_help(parser)
    parsed: Any = parser.parse_args(argv)
    return cls(**{k: v for k, v in parsed.items() if k in cls.__dataclass_fields__})  # type: ignore[attr-defined]


def build_dataclass(cls: type[ConfigT], values: Mapping[str, Any], where: str) -> ConfigT:
    """``cls`` from a mapping of its fields; a field whose type is a dataclass is built from its nested mapping.
    A key that is no field of the class (a setting renamed on one side only) is an error naming ``where``."""
    fields = {field.name: field for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise L2SInputError(f"{where}: {cls.__name__} has no field(s) {unknown} (its fields: {sorted(fields)})")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind) and isinstance(kind, type) and isinstance(value, Mapping):
            value = build_dataclass(kind, value, f"{where}.{name}")
        kwargs[name] = value
    return cls(**kwargs)


def fields_dict(settings: Any) -> dict[str, Any]:
    """A dataclass's fields as keyword arguments (one level: nested dataclasses stay objects)."""
    return {field.name: getattr(settings, field.name) for field in dataclasses.fields(settings)}


def nest(dotted: Mapping[str, Any]) -> dict[str, Any]:
    """``{"data.batch_size": 8}`` as ``{"data": {"batch_size": 8}}`` (keys without a dot stay as they are)."""
    nested: dict[str, Any] = {}
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise L2SInputError(f"override {key!r}: {part!r} is given a value of its own as well")
            node = child
        if isinstance(value, Mapping) and isinstance(node.get(leaf), dict):
            node[leaf] = {**node[leaf], **nest(value)}
        else:
            node[leaf] = dict(value) if isinstance(value, Mapping) else value
    return nested


def config_record(value: Any) -> Any:
    """``value`` as plain YAML data: a dataclass, mapping or jsonargparse ``Namespace`` as a mapping, a path as text,
    any other object (a callback, a logger) as its ``class_path``."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: config_record(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if callable(
        getattr(value, "as_dict", None)
    ):  # a jsonargparse Namespace (a nested mapping given on the command line)
        return config_record(value.as_dict())
    if isinstance(value, Mapping):
        return {str(key): config_record(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [config_record(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return {"class_path": f"{type(value).__module__}.{type(value).__qualname__}"}
