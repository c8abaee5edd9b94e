"""Checks on a query over the runs: the results path, filter keys, filter values (one-line errors).

A filter that cannot match anything because of a typo must say so instead of printing an empty table:
``optimiser.name=gn`` → "unknown filter key 'optimiser.name' — did you mean optimizer.name?". Shared by
``revgn runs`` / ``compare`` / ``plot runs`` and by ``load_runs``.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Iterable

from revgn_cli.config import ConfigError

# Keys every run summary carries besides its flattened config (see loader.run_summaries).
SUMMARY_KEYS = ("run_id", "experiment", "status", "path")


class QueryError(ConfigError):
    """A results path or filter that cannot select runs. One-line message (the CLI prints it as ``error:``)."""


def check_results_dir(results_dir: str | Path) -> Path:
    """The results root must be an existing directory: a typo there would otherwise look like "no runs"."""
    root = Path(results_dir).expanduser()
    if root.is_file():
        raise QueryError(f"results path {root} is a file, not a results directory (give --results DIR)")
    if not root.is_dir():
        raise QueryError(f"results directory {root} does not exist (give --results DIR; `revgn train` creates it)")
    return root


def closest(key: str, known: Iterable[str]) -> str | None:
    """The most similar known key (``difflib``; also tries the last component, so ``lr`` → ``optimizer.lr``)."""
    known = sorted(set(known))
    hit = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if hit:
        return hit[0]
    tails = {k.rsplit(".", 1)[-1]: k for k in known}
    hit = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(tails), n=1, cutoff=0.8)
    return tails[hit[0]] if hit else None


def unknown_key_error(key: str, known: Iterable[str], what: str = "filter key") -> QueryError:
    guess = closest(key, known)
    return QueryError(f"unknown {what} {key!r}" + (f" — did you mean {guess}?" if guess else
                                                     " (keys are override-style, e.g. optimizer.name)"))


def _kind(values: list[Any]) -> str | None:
    """'bool', 'number' or None (strings/mixed: anything can match) for the observed non-null values of a key."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    if all(isinstance(v, bool) for v in vals):
        return "bool"
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
        return "number"
    return None


def _fits(kind: str | None, want: Any) -> bool:
    s = str(want).strip().lower()
    if kind is None or s in ("null", "none"):
        return True
    if kind == "bool":
        return s in ("true", "false")
    try:
        float(s)
        return True
    except ValueError:
        return False


def check_filters(summaries: list[dict[str, Any]], filters: dict[str, Any], schema_keys: Iterable[str] = ()) -> None:
    """Raise ``QueryError`` for a key no run (nor the config schema) has, or a value the key's type cannot take.

    Args:
        summaries: every run's summary dict (flattened config + ``SUMMARY_KEYS`` + ``meta.*``), unfiltered.
        filters: override-style key → wanted value or list of values.
        schema_keys: keys of the config schema, valid even when no listed run has them yet.
    """
    known = set(SUMMARY_KEYS) | set(schema_keys)
    for s in summaries:
        known.update(s)
    for key, want in filters.items():
        if key not in known:
            raise unknown_key_error(key, known)
        kind = _kind([s.get(key) for s in summaries])
        for w in want if isinstance(want, (list, tuple, set)) else [want]:
            if not _fits(kind, w):
                desc, eg = ("true/false", "true") if kind == "bool" else ("numeric", "0.1")
                raise QueryError(f"filter {key}={w} cannot match: {key} is {desc} in these runs "
                                 f"(e.g. {key}={eg})")


def resolve_run(summaries: list[dict[str, Any]], ident: str) -> dict[str, Any]:
    """The run whose id is ``ident`` or starts with it (the table shows 8 characters); one-line error otherwise.

    ``EXPERIMENT/RUN_ID`` picks among runs of the same id in different experiment folders.
    """
    exp, _, rid = ident.strip().rpartition("/")
    hits = [s for s in summaries if str(s["run_id"]).startswith(rid) and (not exp or s.get("experiment") == exp)]
    exact = [s for s in hits if s["run_id"] == rid]
    hits = exact or hits
    if not hits:
        raise QueryError(f"no run {ident!r} in the results dir: `revgn runs` lists the ids")
    if len(hits) > 1:
        names = ", ".join(f"{s.get('experiment')}/{s['run_id']}" for s in hits[:4])
        raise QueryError(f"run id {ident!r} is ambiguous: {names}{' …' if len(hits) > 4 else ''} "
                         f"(give more characters, or EXPERIMENT/RUN_ID)")
    return hits[0]


def differing_keys(summaries: list[dict[str, Any]], ignore: Iterable[str] = ()) -> list[str]:
    """Keys whose values are not all equal across ``summaries`` (``ignore`` and ``meta.*`` aside); a key some
    summaries lack counts as None there."""
    import json

    skip = set(ignore)
    keys = sorted({k for s in summaries for k in s if k not in skip and not k.startswith("meta.")})
    return [k for k in keys
            if len({json.dumps(s.get(k), sort_keys=True, default=str) for s in summaries}) > 1]


def no_match_error(summaries: list[dict[str, Any]], filters: dict[str, Any], matches: Any) -> QueryError:
    """Why ``filters`` select no run, naming the values that exist (``exp_name=nosuch`` → "exp_name has: a, b").

    Args:
        summaries: every run's summary (unfiltered); filters: key → wanted value(s);
        matches: ``(summary, {key: want}) -> bool``, the filter rule of the caller.
    """
    for key, want in filters.items():
        if not any(matches(s, {key: want}) for s in summaries):
            have = sorted({str(s.get(key)) for s in summaries}, key=str)
            shown = ", ".join(have[:8]) + (f" … ({len(have)} values)" if len(have) > 8 else "")
            wanted = ",".join(map(str, want)) if isinstance(want, (list, tuple, set)) else want
            return QueryError(f"no run has {key}={wanted}; {key} has: {shown} "
                              f"({len(summaries)} run(s) in all)")
    spec = " ".join(f"{k}={','.join(map(str, v)) if isinstance(v, (list, tuple, set)) else v}"
                    for k, v in filters.items())
    return QueryError(f"no run matches all of {spec} (each matches some of the {len(summaries)} run(s); "
                      "`revgn runs` without filters lists them)")
