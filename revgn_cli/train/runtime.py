"""Device, dtype and RNG set-up shared by every command."""
from __future__ import annotations

import random

import numpy as np
import torch

from revgn_cli.config import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; ``cuda`` without a GPU is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is available (use device=auto or device=cpu)")
    return torch.device(name)


def resolve_dtype(precision: str) -> torch.dtype:
    return {"float32": torch.float32, "float64": torch.float64}[precision]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A generator for epoch ``epoch``'s batch order, independent of everything else: resumes reproduce it."""
    return torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))


def optimizer_seed(seed: int, phase: int) -> int:
    """The seed of an optimiser's own random stream (GN's `noise`) in optimiser phase ``phase``: independent of the
    batch-order/augmentation streams (epoch_generator) and of the other phases' (a 63-bit SeedSequence draw)."""
    return int(np.random.SeedSequence([int(seed) % 2**64, 0x6E6F6973, int(phase)]).generate_state(1, np.uint64)[0] >> 1)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore ``rng_state()``'s states. The host states always; the CUDA ones only where CUDA is present, one per
    GPU both machines have (a CUDA run resumed on the CPU keeps its host streams; the reverse seeds nothing new)."""
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") and torch.cuda.is_available():
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s.cpu(), i)

