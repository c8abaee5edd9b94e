"""One clear line for every expected failure; tracebacks only with --debug."""
from __future__ import annotations


# Exit codes (README "Commands"): 0 success; 1 an unexpected error (a bug: --debug shows the traceback) or some
# jobs of a sweep failed; 2 an expected failure (bad override, missing data, corrupt or unreadable results …);
# 3 the run diverged (also when a rerun finds it diverged before); 130 interrupted (checkpointed, rerun resumes).
EXIT_UNEXPECTED, EXIT_EXPECTED, EXIT_DIVERGED, EXIT_INTERRUPTED = 1, 2, 3, 130


def expected_errors() -> tuple[type[BaseException], ...]:
    # Imported here, not at the top: `revgn --help` must not pay for Hydra and pandas (fast start).
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from revgn_cli.config import ConfigError
    from revgn_cli.data import DataError
    from revgn_cli.results.store import StoreError

    return (ConfigError, StoreError, DataError, HydraException, OmegaConfBaseException, FileNotFoundError,
            PermissionError)


def one_line(exc: BaseException) -> str:
    """The first line of the error and of its cause (Hydra hides the useful part in ``__cause__``)."""
    parts = []
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen and len(parts) < 3:
        seen.add(id(e))
        text = str(e).strip().splitlines()
        first = text[0].strip() if text else type(e).__name__
        if first and first not in parts:
            parts.append(first)
        e = e.__cause__
    return " — ".join(parts)
