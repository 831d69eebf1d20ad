"""Model names as recorded in output files: one local folder written two ways is one model.

Feature files, steerers and prediction rows record the model they were made with (``ModelSpec.display_name``),
and a later run compares that name with its own before it resumes or applies them. A local folder may be
written ``m``, ``m/``, ``./m`` or as an absolute path; a hub id (``org/name``) has one spelling.
"""

from __future__ import annotations

import os


def normalise_model_name(name: str) -> str:
    """``name`` with an existing local path written in its plain form (``./m/`` → ``m``); other names as given."""
    return os.path.normpath(name) if name and os.path.exists(name) else name


def same_model(recorded: object, given: object) -> bool:
    """Whether two recorded model names are one model: equal, equal once normalised, or one existing local
    file or folder (``os.path.samefile``: a relative and an absolute path). Names recorded by earlier
    versions (``m/``) therefore still match."""
    recorded, given = str(recorded), str(given)
    if recorded == given or normalise_model_name(recorded) == normalise_model_name(given):
        return True
    try:
        return os.path.samefile(recorded, given)
    except OSError:  # not both existing local paths
        return False
