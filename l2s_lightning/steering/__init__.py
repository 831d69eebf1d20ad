"""Steering at generation: a per-row additive hook on block L* and the ``attach_steerer`` API."""

from l2s_lightning.steering.attach import ContextCapture, attach_steerer, check_steerer, steerer_vectors
from l2s_lightning.steering.hook import (
    POSITIONS,
    Positions,
    PrefillTracker,
    SteeringHook,
    add_steering,
    check_alpha,
    check_positions,
    check_steer_tokens,
    enable_hook_guards,
    register_hook,
    steered_from,
    steered_until,
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
    "check_positions",
    "check_steer_tokens",
    "check_steerer",
    "enable_hook_guards",
    "register_hook",
    "steered_from",
    "steered_until",
    "steerer_vectors",
]
