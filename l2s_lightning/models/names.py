"""Model names as recorded in output files: one local folder written two ways is one model.

Feature files, steerers and prediction rows record the model they were made with (``ModelSpec.display_name``),
and a later run compares that name with its own before it resumes or applies them. A local folder may be
written ``m``, ``m/``, ``./m`` or as an absolute path; a hub id (``org/name``) has one spelling.
"""

from __future__ import annotations

import os
import posixpath


def normalise_model_name(name: str) -> str:
    """``name`` with an existing local path written in its plain form (``./m/`` → ``m``; ``..`` is collapsed
    only where that names the same folder, i.e. not across a symbolic link); other names as given."""
    if not name or not os.path.exists(name):
        return name
    plain = os.path.normpath(name)
    try:
        return plain if os.path.samefile(plain, name) else name
    except OSError:
        return name


def model_key(name: object) -> str:
    """A key equal for every spelling of one model where it can be known: an existing local path's real path;
    a path-like name that does not exist here (``./m``, ``m/``, ``/abs/m``) without its redundant parts; a hub
    id as given. Used to group rows written by runs that spelled one model two ways."""
    name = str(name)
    if name and os.path.exists(name):
        return os.path.realpath(name)
    if name.startswith(("./", "../", "/")) or name.endswith("/"):
        return posixpath.normpath(name)
    return name


def same_setting(key: str, recorded: object, value: object) -> bool:
    """Whether a recorded setting ``key`` (an output file's attribute, a prediction row's field) equals this
    run's ``value``: a model name by :func:`same_model`, anything else by equality."""
    return same_model(recorded, value) if key == "model" else recorded == value


def same_model(recorded: object, given: object) -> bool:
    """Whether two recorded model names are one model: equal, equal once normalised, or one existing local
    file or folder (``os.path.samefile``: a relative and an absolute path). Names recorded by earlier
    versions (``m/``) therefore still match."""
    recorded, given = str(recorded), str(given)
    if recorded == given or model_key(recorded) == model_key(given):
        return True
    try:
        return os.path.samefile(recorded, given)
    except OSError:  # not both existing local paths
        return False
