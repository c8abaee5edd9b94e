"""``Stamp``: tells whether tensors still hold the contents they had when stamped, without comparing values.

A tensor's contents can change in place (an optimiser step, ``load_state_dict``'s ``copy_``, any ``add_``) — which
bumps its version counter — or by getting new storage (``.to()``, assigning ``.data``) — which changes its data
pointer. A stamp records both and keeps a detached alias of each tensor, so the old storage stays alive and no
later tensor can be allocated at its address. What it cannot see: an in-place edit through ``.data``, which
bypasses version counters (autograd's own checks miss it too).
"""
from __future__ import annotations

from typing import Iterable

from torch import Tensor

__all__ = ["Stamp"]


def _key(tensors: Iterable[Tensor]) -> tuple[tuple[int, int], ...]:
    return tuple((t.data_ptr(), t._version) for t in tensors)


class Stamp:
    """The identity of the contents of ``tensors`` now; ``matches(tensors)`` is True while none has changed."""

    def __init__(self, tensors: Iterable[Tensor]):
        tensors = list(tensors)
        self._key = _key(tensors)
        self._pins = [t.detach() for t in tensors]  # share storage and version counter, copy nothing

    def matches(self, tensors: Iterable[Tensor]) -> bool:
        return _key(tensors) == self._key
