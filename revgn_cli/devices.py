"""Where tensors live: host → device copies that do not stall the GPU, and the check that a run's state is all on
its model's device (tests use it after construction and after a resume)."""
from __future__ import annotations

from typing import Any, Iterator

import torch
from torch import Tensor

__all__ = ["to_device", "held_tensors", "off_device"]


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """``t`` on ``device`` without a host sync: a plain ``.to("cuda")`` of pageable host memory waits for the copy
    (and so for every kernel queued before it); from pinned memory with ``non_blocking`` the copy is only queued
    (torch's pinned allocator keeps the buffer alive until it has run). Elsewhere a plain ``.to``."""
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def held_tensors(obj: Any, path: str = "") -> Iterator[tuple[str, Tensor]]:
    """(path, tensor) for every tensor in a nested state (dicts, lists, tuples, objects with ``state_dict``)."""
    if isinstance(obj, Tensor):
        yield path, obj
    elif hasattr(obj, "state_dict") and callable(obj.state_dict):
        yield from held_tensors(obj.state_dict(), path)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from held_tensors(v, f"{path}.{k}" if path else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from held_tensors(v, f"{path}[{i}]")


def off_device(obj: Any, device: torch.device) -> list[str]:
    """Paths of the tensors in ``obj`` that are not on ``device``, "path: device" each (empty: all there).

    torch.optim keeps its ``step`` counters as 0-d host tensors by design (unless capturable/fused): not a fault.
    """
    dev = torch.device(device)
    out = []
    for p, t in held_tensors(obj):
        if t.device.type == dev.type and (dev.index is None or t.device.index in (None, dev.index)):
            continue
        if t.dim() == 0 and t.device.type == "cpu" and p.split(".")[-1] == "step":
            continue
        out.append(f"{p}: {t.device}")
    return out
