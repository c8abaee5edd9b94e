"""Command-line arguments before Hydra sees them: ``--results`` / ``results_dir=``, and one clear line for the
overrides Hydra's parser would reject with raw lexer text (a flag in the wrong place, ``--cfg job``, a comma list
given to ``train``, unquoted non-ASCII, a trailing comma).

Imports nothing heavy at module level: the CLI imports it for every command, and Hydra's override parser is only
loaded when there are overrides to check.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

# Global flags (`revgn --debug train …`): given after the command they would be read as overrides.
GLOBAL_FLAGS = ("--debug", "--quiet", "-q")


def comma_list(spec: str | None) -> list[str]:
    """``"a, b,,c"`` → ``["a", "b", "c"]``: a comma-list option's items, stripped, empty ones dropped (None → [])."""
    return [s.strip() for s in (spec or "").split(",") if s.strip()]


def preset_of(overrides: list[str] | tuple[str, ...]) -> str | None:
    """The experiment preset ``overrides`` name (``experiment=<name>``, ``+``/``++`` prefixes allowed), or None."""
    return next((o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith("experiment=")), None)


def default_launcher(overrides: list[str] | tuple[str, ...], n_jobs: int = 2) -> list[str]:
    """The launcher overrides a study or the tuner adds to ``overrides``: Hydra's joblib launcher with ``n_jobs``
    workers, where what ``overrides`` say wins. A launcher they choose (``hydra/launcher=…``) is kept whole: nothing
    is added. Launcher settings they give alone (``hydra.launcher.n_jobs=1``) apply to the joblib launcher, in place
    of the default's. With ``n_jobs`` 1 and no setting, nothing: Hydra's basic launcher trains one run at a time."""
    given = [o.lstrip("+") for o in overrides]
    if any(o.startswith("hydra/launcher=") for o in given):
        return []
    settings = {o.split("=", 1)[0] for o in given if o.startswith("hydra.launcher.")}
    if n_jobs == 1 and not settings:
        return []
    return ["hydra/launcher=joblib", *([] if "hydra.launcher.n_jobs" in settings else [f"hydra.launcher.n_jobs={n_jobs}"])]


def _config_error(msg: str) -> Exception:
    from revgn_cli.config import ConfigError

    return ConfigError(msg)


def pop_results(args: list[str] | None, results: Path | str | None,
                default: str | None = "results") -> tuple[list[str], str | None]:
    """Take ``results_dir=…`` out of ``args``; it and ``--results`` mean the same (both given and different: error).

    Returns (the other arguments, the results dir).
    """
    rest, given = [], None
    for a in args or []:
        if a.startswith("results_dir="):
            given = a.split("=", 1)[1]
        else:
            rest.append(a)
    if given is not None and results is not None and Path(given) != Path(results):
        raise _config_error(f"results dir given twice: --results {results} and results_dir={given}")
    chosen = given if given is not None else results if results is not None else default
    return rest, None if chosen is None else str(chosen)


def _flag_error(flag: str, command: str) -> Exception:
    if flag in GLOBAL_FLAGS:
        return _config_error(f"{flag} is a global flag: put it before the command (revgn {flag} {command} …)")
    if flag == "--cfg":
        return _config_error(f"--cfg is Hydra's; to print the resolved config without training use "
                             f"`revgn {command} --show-config OVERRIDES…`")
    return _config_error(f"unknown option {flag!r} for `revgn {command}`: overrides are key=value "
                         f"(see `revgn {command} --help`)")


def _option_values(value: str) -> list[str]:
    """The options an override names: ``a``, ``a,b``, ``choice(a,b)``; none for other sweep functions (range …)."""
    v = value.strip()
    if "(" in v:
        fn, _, inner = v.partition("(")
        if fn.strip() != "choice":
            return []
        v = inner.rstrip(")")
    return [x.strip("'\"") for x in comma_list(v)]


def check_group_choices(args: list[str]) -> None:
    """``group=option`` must name a file conf/<group>/<option>.yaml: one line with the close names otherwise.

    Hydra rejects most unknown options itself, but not ``experiment`` (an optional default): without this a typo
    there (``experiment=fig1_quik``) would silently train the default config.
    """
    import difflib

    from revgn_cli.confinfo import config_groups

    groups = None
    for a in args:
        key, eq, value = a.partition("=")
        key = key.lstrip("+~").split("@", 1)[0]
        if not eq or "." in key or "/" in key:
            continue
        groups = config_groups() if groups is None else groups
        if key not in groups:
            continue
        for opt in _option_values(value):
            if opt not in groups[key] and opt.lower() not in ("null", "none"):
                near = difflib.get_close_matches(opt, groups[key], n=3, cutoff=0.5)
                hint = f" — did you mean {' or '.join(near)}?" if near else f" (one of: {', '.join(groups[key])})"
                raise _config_error(f"unknown {key} {opt!r} (no conf/{key}/{opt}.yaml){hint}")


def check_overrides(args: list[str], command: str, *, allow_sweep: bool = False) -> None:
    """Raise one ``ConfigError`` line naming the override and the fix for what Hydra's parser would reject.

    Args:
        args: the overrides as typed (after the command's own options were taken out by Typer).
        command: ``train`` / ``sweep`` … (for the messages).
        allow_sweep: comma lists and ``range(…)`` are fine (``sweep``); for ``train`` they point to ``revgn sweep``.
    """
    for a in args:
        if a.startswith("-") and not a.startswith("-="):
            raise _flag_error(a.split("=", 1)[0], command)
    if not args:
        return
    check_group_choices(args)
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for a in args:
        key, eq, value = a.partition("=")
        if not eq and not a.startswith("~"):  # ~key deletes a key: the one override without a value
            raise _config_error(f"override {a!r} is not key=value (e.g. optimizer=gn or optimizer.lr=0.1)")
        if value.rstrip().endswith(","):
            raise _config_error(f"override {a!r} ends in a comma: drop it ({key}={value.rstrip().rstrip(',')})")
        if key.lstrip("+") == "exp_name" and not value.strip("'\"").isascii():
            # Quoting would get it past the parser, but a folder name must be plain ASCII (config.EXP_NAME).
            raise _config_error(f"exp_name={value}: a folder name of ASCII letters, digits and _ - + = , . "
                                f"(e.g. exp_name={value.strip(chr(39) + chr(34)).encode('ascii', 'ignore').decode() or 'my_run'})")
        try:
            ov = parser.parse_override(a)
        except HydraException as e:
            if not value.isascii() and value[:1] not in "'\"":
                raise _config_error(f"override {a!r}: quote a value with non-ASCII characters, e.g. "
                                    f"{key}='{value}' (in a shell: \"{key}='{value}'\")") from None
            why = (str(e).strip().splitlines() or [""])[0]
            raise _config_error(f"cannot parse override {a!r}: {why} (quote values with spaces or special "
                                f"characters, e.g. {key}='{value}')") from None
        if ov.is_sweep_override() and not allow_sweep:
            raise _config_error(f"{a} is a sweep (several values): `revgn {command}` runs one config — use "
                                f"`revgn sweep {a} …` (or give one value)")


def parse_filters(items: list[str]) -> dict[str, Any]:
    """``key=value`` filters (``key=a,b`` matches either value) → a dict for ``query_runs`` / ``load_runs``."""
    flt: dict[str, Any] = {}
    for it in items:
        if "=" not in it or it.startswith("-"):
            raise _config_error(f"filter {it!r} is not key=value (e.g. optimizer.name=gn)")
        k, v = it.split("=", 1)
        flt[k] = v.split(",") if "," in v else v
    return flt
