"""The runs table of ``revgn runs``: which columns, in which order, as a rich table, CSV or JSON.

Rows are run summaries (``loader.run_summaries``) plus their last metrics. The columns that tell runs apart are
picked automatically: every config key whose value differs among the listed runs (seed, swept keys), so a
9-job ``model.init_std`` sweep shows nine different ``init_std`` values instead of nine identical rows.
"""
from __future__ import annotations

import csv
import io
import json
import math
from typing import Any, Callable, Iterable

from revgn_cli.overrides import comma_list
from revgn_cli.results.query import QueryError, differing_keys, unknown_key_error

METRICS = ("train_loss", "train_acc", "test_loss", "test_acc")
VAL_METRICS = ("val_loss", "val_acc")  # only runs that hold out a validation split (regime.val_size > 0) log them
DEFAULT_METRICS = ("train_loss", "test_loss", "test_acc")
# Never a "varying" column: where output goes / how it is shown, per-run bookkeeping, or shown already.
NOT_VARYING = ("results_dir", "device", "dataset.root", "exp_name", "run_id", "status", "path", "epochs", "wall_s",
               "error")  # a corrupt or stale run's reason: printed under the table, whole
# Varying keys shown first (the ones a reader scans for); the rest follow alphabetically.
PRIORITY = ("experiment", "seed", "optimizer.name", "optimizer.lr", "dataset.name", "regime.name", "model.init_std")
# Which varying keys to keep when not all fit, most telling first: the settings that make runs different
# experiments before the seed, which only tells replicates of one setting apart (a GN and an Adam row must not
# look alike at 80 columns); keys not named here come between, alphabetically.
TELLING = ("optimizer.name", "optimizer.lr", "experiment", "dataset.name", "regime.name", "model.init_std")
LEAST_TELLING = ("seed",)
MAX_AUTO = 4  # varying columns in the table at most (csv/json get them all): the table must fit 80 columns
SHORT_ID = 8  # run-id characters shown in the table (unique enough; csv/json and `runs show` have the full id)
FORMATS = ("table", "csv", "json")


def add_metrics(rows: list[dict[str, Any]], last_logged: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Give each row ``epochs`` (done), ``wall_s`` and the headline metrics (``val_*`` too), in place.

    Finished runs have them in ``meta.final``; an unfinished (running, interrupted, failed) run gets the last
    values it logged, read by ``last_logged(row)`` (returns ``{"epoch": e, metric: value, …}`` or ``{}``), and so
    does a run with a validation split whose ``meta.final`` predates the ``val_*`` entries.
    """
    for r in rows:
        final = r.get("meta.final") or {}
        epochs = r.get("meta.epochs_done")
        holds_val = (r.get("regime.val_size") or 0) > 0 and not all(k in final for k in VAL_METRICS)
        if not final or epochs is None or holds_val:
            last = last_logged(r)
            final = {**{k: v for k, v in last.items() if k in (*METRICS, *VAL_METRICS)}, **final}
            epochs = epochs if epochs is not None else last.get("epoch")
        r.update({k: final.get(k) for k in (*METRICS, *VAL_METRICS)})
        r["epochs"] = int(epochs) if isinstance(epochs, (int, float)) and math.isfinite(epochs) else None
        r["wall_s"] = r.get("meta.wall_s")


def varying_keys(rows: list[dict[str, Any]]) -> list[str]:
    """Config keys (and ``experiment``) whose value differs among ``rows``, most telling first."""
    if len(rows) < 2:
        return []
    vary = differing_keys(rows, ignore=(*NOT_VARYING, *METRICS, *VAL_METRICS))
    return sorted(vary, key=lambda k: (PRIORITY.index(k) if k in PRIORITY else len(PRIORITY), k))


def by_telling(keys: Iterable[str]) -> list[str]:
    """``keys`` ordered most telling first (``TELLING``, the rest alphabetically, ``LEAST_TELLING`` last)."""
    def rank(k: str) -> tuple:
        if k in TELLING:
            return (0, TELLING.index(k), k)
        return (2, LEAST_TELLING.index(k), k) if k in LEAST_TELLING else (1, 0, k)
    return sorted(keys, key=rank)


def known_columns(rows: list[dict[str, Any]]) -> set[str]:
    return {k for r in rows for k in r if not k.startswith("meta.")} | set(METRICS) | {"epochs", "wall_s"}


def parse_columns(spec: str, rows: list[dict[str, Any]]) -> list[str]:
    """``--columns a,b`` → keys; an unknown key is an error naming the closest one."""
    cols = comma_list(spec)
    known = known_columns(rows)
    for c in cols:
        if rows and c not in known:
            raise unknown_key_error(c, known, "column")
    return cols


def default_columns(rows: list[dict[str, Any]], *, cap: int | None = MAX_AUTO,
                    filtered: Iterable[str] = ()) -> tuple[list[str], list[str]]:
    """(columns, varying keys left out by ``cap``): run id, status, epochs, the varying keys, the keys the listing
    was filtered on (``optimizer.name=adam`` shows the optimizer even if every listed run has it), metrics."""
    vary = varying_keys(rows)
    keep = set(by_telling(vary)[:cap] if cap is not None else vary)
    shown, hidden = [k for k in vary if k in keep], [k for k in by_telling(vary) if k not in keep]
    shown += [k for k in filtered if k not in shown and k not in NOT_VARYING]
    return ["run_id", "status", "epochs", *shown, *DEFAULT_METRICS], hidden


def _sort_value(v: Any) -> tuple:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return (1, 0, "")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (0, 0, float(v))
    return (0, 1, str(v))


def sort_rows(rows: list[dict[str, Any]], spec: str) -> list[dict[str, Any]]:
    """``--sort KEY[:desc]`` (or ``:asc``); runs without the key go last either way."""
    key, _, direction = spec.partition(":")
    key, direction = key.strip(), (direction.strip().lower() or "asc")
    if direction not in ("asc", "desc"):
        raise QueryError(f"--sort {spec!r}: the direction is asc or desc (e.g. --sort test_acc:desc)")
    if rows and key not in known_columns(rows):
        raise unknown_key_error(key, known_columns(rows), "sort key")
    present = [r for r in rows if _sort_value(r.get(key))[0] == 0]
    absent = [r for r in rows if _sort_value(r.get(key))[0] == 1]
    present.sort(key=lambda r: _sort_value(r.get(key)), reverse=direction == "desc")
    return present + absent


def header(key: str, columns: Iterable[str]) -> str:
    """Short header: ``optimizer.lr`` → ``lr``, ``optimizer.name`` → ``optimizer`` (full key if ambiguous)."""
    def short(k: str) -> str:
        if k == "run_id":
            return "run id"
        if k in METRICS:
            return k.replace("_", " ")
        head, _, tail = k.rpartition(".")
        return (head.rpartition(".")[2] if tail == "name" else tail) or k
    clash = sum(short(c) == short(key) for c in columns) > 1
    return key if clash else short(key)


def cell(key: str, value: Any) -> str:
    """Table text of one value: 4 significant digits, — for missing, the short run id."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if key == "run_id":
        return str(value)[:SHORT_ID]
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=str)
    return str(value)


def _plain(value: Any) -> Any:
    return json.dumps(value, default=str) if isinstance(value, (list, dict)) else value


def to_csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Full run ids and raw values; ``pandas.read_csv`` reads it back (missing values are empty)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow(["" if r.get(c) is None else _plain(r.get(c)) for c in columns])
    return buf.getvalue()


def to_json(rows: list[dict[str, Any]], columns: list[str]) -> str:
    return json.dumps([{c: r.get(c) for c in columns} for r in rows], indent=1, default=str)


def column_width(key: str, rows: list[dict[str, Any]], columns: list[str], wrap_header: bool = True) -> int:
    """Narrowest width that shows every value whole; the header wraps between words unless ``wrap_header`` is
    False."""
    head = header(key, columns)
    head_w = max((len(w) for w in head.split()), default=1) if wrap_header else len(head)
    return max([head_w, *(len(cell(key, r.get(key))) for r in rows)])


def table_width(rows: list[dict[str, Any]], columns: list[str], wrap_header: bool = True) -> int:
    return sum(column_width(c, rows, columns, wrap_header) for c in columns) + 3 * (len(columns) - 1)


def fit(rows: list[dict[str, Any]], columns: list[str], droppable: list[str], width: int) -> tuple[list[str], list[str]]:
    """Drop ``droppable`` columns, last first (pass them ``by_telling``), until the table fits ``width`` (3
    characters between columns).

    Returns (columns kept, columns dropped), so the caption can name what was left out.
    """
    cols, dropped = list(columns), []
    for key in reversed(droppable):
        if table_width(rows, cols) <= width:
            break
        if key in cols:
            cols.remove(key)
            dropped.insert(0, key)
    return cols, dropped
