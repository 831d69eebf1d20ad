"""Reading a whole YAML or JSON file, with an error that names the file when it does not parse."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from l2s_lightning.errors import L2SInputError


def read_yaml(path: str | Path) -> Any:
    """The value of a UTF-8 YAML file; a ValueError naming ``path`` when it is not valid YAML."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise L2SInputError(f"{path}: not valid YAML ({err})") from None


def read_json(path: str | Path) -> Any:
    """The value of a UTF-8 JSON file; a ValueError naming ``path`` when it is not valid JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise L2SInputError(f"{path}: not valid JSON ({err})") from None
