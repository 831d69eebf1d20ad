"""Features to the host without stalling the accelerator: a non-blocking copy into pinned memory plus an event.

``predict_step`` starts the copy and returns at once; the HDF5 writer waits for the event on its own thread,
so the accelerator already runs the next batch while the last one is checked and written.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


def copy_to_host(tensors: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.cuda.Event | None]:
    """Start copying ``tensors`` to the CPU; returns the host tensors and the CUDA event after which they hold
    their values (None: already complete, for CPU tensors or devices copied synchronously)."""
    if not any(t.device.type == "cuda" for t in tensors.values()):
        return {name: t.cpu() for name, t in tensors.items()}, None
    host = {}
    for name, tensor in tensors.items():
        buffer = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=True)
        host[name] = buffer.copy_(tensor, non_blocking=True)
    ready = torch.cuda.Event()
    ready.record()
    return host, ready
