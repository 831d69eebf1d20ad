"""Contrastive templates (T+, T-) as data: behaviours, and the mapping from dataset category to behaviour."""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from l2s_lightning.errors import L2SInputError
from l2s_lightning.readers import read_yaml
from l2s_lightning.resources import bundled_file, bundled_names

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

# The folder of l2s_lightning/resources/ that holds the bundled template sets (``<name>.yaml``).
TEMPLATE_DIR = "templates"
# The behaviour of a row that brings its own T+/T- and whose category (if any) has no template.
CUSTOM_BEHAVIOUR = "custom"
# The completion teacher-forced on both sides for a ``zero_target`` behaviour: the two sides are the same text, so
# its rows' target is z = 0 (the extraction sets it to exactly 0 for rows whose completions are equal).
ZERO_TARGET_COMPLETION = "Sure,"
# The keys a ``zero_target`` behaviour may have (it has no contrast: no completions, suffix or fields).
ZERO_TARGET_KEYS = {"zero_target", "instruction"}


@dataclass(frozen=True)
class Behaviour:
    """One behaviour: the desired (positive) and undesired (negative) completion of its inputs."""

    name: str
    positive: str
    negative: str
    instruction: str = ""
    suffix: str = ""
    close_turn: bool = False
    fields: Mapping[str, str] = field(default_factory=dict)
    zero_target: bool = False  # no contrast: its rows' target is z = 0 (both sides are ZERO_TARGET_COMPLETION)


@dataclass(frozen=True)
class Contrast:
    """The resolved contrast of one sample."""

    behaviour: str
    positive: str
    negative: str
    suffix: str
    close_turn: bool
    instruction: str


@dataclass(frozen=True)
class TemplateSet:
    """Behaviours plus the category → (behaviour, fields) mapping of one dataset family."""

    name: str
    behaviours: Mapping[str, Behaviour]
    categories: Mapping[str, tuple[str, Mapping[str, str]]]
    default_behaviour: str | None = None
    prompt_baseline: str = ""
    source: str = ""

    def behaviour_of(self, category: str, sample_id: str = "?") -> tuple[str, Mapping[str, str]]:
        """The behaviour name and fields for a category; a clear error when it has none."""
        if category in self.categories:
            return self.categories[category]
        if self.default_behaviour:
            return self.default_behaviour, {}
        raise L2SInputError(
            f"category {category!r} of sample {sample_id!r} has no template in template set "
            f"{self.name!r} ({self.source}); known categories: {sorted(self.categories)}"
        )

    def fingerprint(self) -> str:
        """sha256 of everything that shapes the extracted features: each behaviour's completions, suffix,
        close_turn and fields (and ``zero_target`` where set), the category mapping and the default behaviour
        (not instructions/names)."""
        content = {
            "behaviours": {
                name: [b.positive, b.negative, b.suffix, bool(b.close_turn), dict(sorted(b.fields.items()))]
                + (["zero_target"] if b.zero_target else [])
                for name, b in sorted(self.behaviours.items())
            },
            "categories": {key: [name, dict(sorted(f.items()))] for key, (name, f) in sorted(self.categories.items())},
            "default_behaviour": self.default_behaviour,
        }
        return hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def resolve(
        self,
        category: str,
        sample_id: str = "?",
        behaviour: str | None = None,
        positive: str | None = None,
        negative: str | None = None,
        fields: Mapping[str, Any] | None = None,
    ) -> Contrast:
        """The contrast of one sample; the row's own ``positive``/``negative`` win over the template.

        A row with both its own completions needs no template: its behaviour is the given one, else its
        category's, else :data:`CUSTOM_BEHAVIOUR` (also when it has no category). A ``zero_target`` behaviour
        gives both sides :data:`ZERO_TARGET_COMPLETION` (z = 0), unless the row brings its own completions.
        """
        if not behaviour and positive and negative and category not in self.categories:
            behaviour = CUSTOM_BEHAVIOUR
        if behaviour:
            category_fields: Mapping[str, str] = {}
            if behaviour not in self.behaviours and not (positive and negative):
                raise L2SInputError(
                    f"sample {sample_id!r}: behaviour {behaviour!r} is not in template set {self.name!r} "
                    f"(known: {sorted(self.behaviours)})"
                )
        else:
            behaviour, category_fields = self.behaviour_of(category, sample_id)
        spec = self.behaviours.get(behaviour) or Behaviour(behaviour, positive or "", negative or "")
        values = {**spec.fields, **category_fields, **(fields or {})}

        def fill(text: str, what: str) -> str:
            try:
                return text.format(**values)
            except KeyError as err:
                raise L2SInputError(
                    f"sample {sample_id!r}: template {self.name!r}/{behaviour} {what} needs field {err} "
                    f"(row fields: {sorted(values)})"
                ) from None

        completions = {
            "positive": positive if positive else fill(spec.positive, "positive"),
            "negative": negative if negative else fill(spec.negative, "negative"),
        }
        for what, text in completions.items():
            if not text.strip():
                raise L2SInputError(
                    f"sample {sample_id!r}: the {what} completion is empty after templating (behaviour "
                    f"{behaviour!r}, template set {self.name!r}): give the row a non-empty `{what}` or fix the template"
                )
        return Contrast(
            behaviour=behaviour,
            **completions,
            suffix=fill(spec.suffix, "suffix"),
            close_turn=spec.close_turn,
            instruction=spec.instruction,
        )


def _check_format(text: str, where: str) -> None:
    """A template text must be a format string with named fields only (``{field}``; ``{{`` / ``}}`` for braces)."""
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(text) if field is not None]
    except ValueError as err:
        raise L2SInputError(f"{where} {text!r}: {err} (write {{{{ and }}}} for literal braces)") from None
    positional = [field for field in fields if field == "" or field.isdigit()]
    if positional:
        raise L2SInputError(
            f"{where} {text!r} has a field without a name ({{{positional[0]}}}): name it, "
            "or write {{ and }} for literal braces"
        )


def _zero_target_behaviour(name: str, spec: dict[str, Any], where: str) -> Behaviour:
    """A behaviour with ``zero_target: true``: no completions (its rows' target is z = 0), an optional
    instruction; anything else is an error naming the file and the behaviour."""
    if spec["zero_target"] is not True:
        raise L2SInputError(
            f"{where}: behaviour {name!r} zero_target is {spec['zero_target']!r}: write `zero_target: true` "
            "(unquoted), or leave it out and give positive and negative completions"
        )
    extra = sorted(set(spec) - ZERO_TARGET_KEYS)
    if extra:
        raise L2SInputError(
            f"{where}: behaviour {name!r} has zero_target: true and {extra}: a zero-target behaviour has no "
            "completions, suffix or fields (its target is z = 0); drop them, or drop zero_target for a contrastive pair"
        )
    instruction = spec.get("instruction", "")
    if not isinstance(instruction, str):
        raise L2SInputError(f"{where}: behaviour {name!r} instruction is {instruction!r}, not text")
    return Behaviour(
        name=name,
        positive=ZERO_TARGET_COMPLETION,
        negative=ZERO_TARGET_COMPLETION,
        instruction=instruction,
        zero_target=True,
    )


def template_names() -> list[str]:
    """The names of the bundled template sets (``l2s_lightning/resources/templates/<name>.yaml``)."""
    return [name.removesuffix(".yaml") for name in bundled_names(TEMPLATE_DIR, ".yaml")]


def template_path(name_or_path: str) -> Path | Traversable:
    """A template YAML by path, or a bundled set by name from ``l2s_lightning/resources/templates/``."""
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"} and path.is_file():
        return path
    bundled = bundled_file(TEMPLATE_DIR, f"{name_or_path}.yaml")
    if bundled is not None:
        return bundled
    raise FileNotFoundError(
        f"template set {name_or_path!r} not found: not a YAML file, and not one of {template_names()}"
    )


def load_templates(name_or_path: str) -> TemplateSet:
    """Read and check a template YAML (behaviours with positive/negative, categories mapping)."""
    found = template_path(name_or_path)
    with resources.as_file(found) as path:
        raw = read_yaml(path) or {}
    where = str(found)
    if not isinstance(raw, dict):
        raise L2SInputError(f"{where}: a template set must be a mapping (name, behaviours, categories), got {raw!r}")
    for key in ("behaviours", "categories"):
        if not isinstance(raw.get(key) or {}, dict):
            raise L2SInputError(f"{where}: {key} must be a mapping of names, got {raw[key]!r}")
    behaviours: dict[str, Behaviour] = {}
    for name, spec in (raw.get("behaviours") or {}).items():
        if not isinstance(spec, dict):
            raise L2SInputError(
                f"{where}: behaviour {name!r} must be a mapping with positive and negative, got {spec!r}"
            )
        if spec.get("zero_target", False) is not False:
            behaviours[name] = _zero_target_behaviour(name, spec, where)
            continue
        spec = {key: value for key, value in spec.items() if key != "zero_target"}  # `zero_target: false`
        unknown = set(spec) - {"positive", "negative", "instruction", "suffix", "close_turn", "fields"}
        if unknown:
            raise L2SInputError(
                f"{where}: behaviour {name!r} has unknown keys {sorted(unknown)} "
                "(a behaviour has positive, negative, instruction, suffix, close_turn, fields; or zero_target: true)"
            )
        missing = [key for key in ("positive", "negative") if spec.get(key) in (None, "")]
        if missing:
            raise L2SInputError(f"{where}: behaviour {name!r} lacks {missing} (or is it zero_target: true?)")
        for key in ("positive", "negative", "instruction", "suffix"):
            if key in spec and not isinstance(spec[key], str):
                raise L2SInputError(
                    f"{where}: behaviour {name!r} {key} is {spec[key]!r}, not text "
                    "(quote it: YAML reads yes/no as booleans)"
                )
        if not isinstance(spec.get("close_turn", False), bool):
            raise L2SInputError(
                f"{where}: behaviour {name!r} close_turn is {spec['close_turn']!r}, not true or false (unquoted)"
            )
        if not isinstance(spec.get("fields", {}), dict):
            raise L2SInputError(f"{where}: behaviour {name!r} fields must be a mapping, got {spec['fields']!r}")
        for key in ("positive", "negative", "suffix"):
            _check_format(spec.get(key) or "", f"{where}: behaviour {name!r} {key}")
        behaviours[name] = Behaviour(name=name, **spec)
    if not behaviours:
        raise L2SInputError(f"{where}: no behaviours defined")
    categories: dict[str, tuple[str, Mapping[str, str]]] = {}
    for category, target in (raw.get("categories") or {}).items():
        if not isinstance(target, str) and not (isinstance(target, dict) and isinstance(target.get("behaviour"), str)):
            raise L2SInputError(
                f"{where}: category {category!r} must map to a behaviour name or to "
                f"{{behaviour: ..., fields: {{...}}}}, got {target!r}"
            )
        name, fields = (target, {}) if isinstance(target, str) else (target["behaviour"], target.get("fields", {}))
        if not isinstance(fields, dict):
            raise L2SInputError(f"{where}: category {category!r} fields must be a mapping, got {fields!r}")
        if name not in behaviours:
            raise L2SInputError(f"{where}: category {category!r} maps to unknown behaviour {name!r}")
        categories[str(category)] = (name, dict(fields))
    default = raw.get("default_behaviour")
    if default is not None and default not in behaviours:
        raise L2SInputError(f"{where}: default_behaviour {default!r} is not a behaviour")
    return TemplateSet(
        name=raw.get("name", Path(found.name).stem),
        behaviours=behaviours,
        categories=categories,
        default_behaviour=default,
        prompt_baseline=(raw.get("prompt_baseline") or "").strip(),
        source=where,
    )
