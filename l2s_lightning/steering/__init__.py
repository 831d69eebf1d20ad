"""Steering at generation: a per-row additive hook on block L* and the ``attach_steerer`` API."""

from l2s_lightning.steering.attach import ContextCapture, attach_steerer
from l2s_lightning.steering.hook import (
    POSITIONS,
    Positions,
    PrefillTracker,
    SteeringHook,
    add_steering,
    check_alpha,
    enable_hook_guards,
    register_hook,
)

__all__ = [
    "POSITIONS",
    "ContextCapture",
    "Positions",
    "PrefillTracker",
    "SteeringHook",
    "add_steering",
    "attach_steerer",
    "check_alpha",
    "enable_hook_guards",
    "register_hook",
]
