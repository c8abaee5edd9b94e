"""Results on disk: run directories (store) and the one reader plots use (loader)."""
from __future__ import annotations

import importlib
from typing import Any

# Resolved on first use (PEP 562): `revgn --help` must not import pandas.
_LAZY = {**{n: "revgn_cli.results.loader" for n in ("load_runs", "read_config", "run_summaries")},
         **{n: "revgn_cli.results.store" for n in ("ROW_KEYS", "RunDir", "StoreError", "iter_run_dirs")}}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)


__all__ = ["load_runs", "read_config", "run_summaries", "RunDir", "StoreError", "iter_run_dirs", "ROW_KEYS"]
