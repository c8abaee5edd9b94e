"""One clear line for every expected failure; tracebacks only with --debug."""
from __future__ import annotations


# Exit codes (README "Commands"): 0 success; 1 an unexpected error (a bug: --debug shows the traceback) or some
# jobs of a sweep failed; 2 an expected failure (bad override, missing data, corrupt or unreadable results …);
# 3 the run diverged (also when a rerun finds it diverged before); 130 interrupted (checkpointed, rerun resumes).
EXIT_UNEXPECTED, EXIT_EXPECTED, EXIT_DIVERGED, EXIT_INTERRUPTED = 1, 2, 3, 130


# (module, class) of every expected failure; see is_expected.
EXPECTED = (("revgn_cli.config", "ConfigError"), ("revgn_cli.results.store", "StoreError"),
            ("revgn_cli.data", "DataError"), ("hydra.errors", "HydraException"),
            ("omegaconf.errors", "OmegaConfBaseException"))


def is_expected(exc: BaseException) -> bool:
    """Is ``exc`` an expected failure (exit 2)? Imports nothing: a class whose module was never imported cannot
    have been raised, so only the loaded ones are checked (`revgn --help` and error paths stay fast)."""
    import sys

    if isinstance(exc, (FileNotFoundError, PermissionError)):
        return True
    for mod, name in EXPECTED:
        m = sys.modules.get(mod)
        if m is not None and isinstance(exc, getattr(m, name)):
            return True
    return False


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
