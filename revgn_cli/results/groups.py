"""Runs grouped over seeds, and paired comparisons between groups (``revgn runs --group-by``, ``revgn compare --by``).

Input rows are run summaries with their final metrics (``loader.query_runs`` + ``table.add_metrics``). A *group* is
the finished runs (done or diverged) that share the values of the grouping keys; only the seed may differ inside it,
so a mean never mixes settings. Diverged runs stay in the group's count (``n``) but are counted apart and left out
of every mean: their last logged metrics describe a run that blew up, not the setting.

A comparison pairs the runs of two groups by seed and hands the per-seed differences to ``revgn_cli.stats`` (the
one implementation of the verdict rules). Differences are oriented so that > 0 means "B is better than A": A − B
for metrics where lower is better (losses), B − A where higher is better (accuracies). ``METRIC_RULES`` is the one
table of directions and default SESOIs.
"""
from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from revgn_cli.overrides import comma_list
from revgn_cli.results.query import QueryError, unknown_key_error
from revgn_cli.results.table import METRICS, NOT_VARYING, VAL_METRICS, _sort_value, cell, header, known_columns, varying_keys
from revgn_cli.stats import Verdict, judge, judge_family

FINISHED = ("done", "diverged")
FOLD = ("seed",)  # the key a group folds (its runs differ in it and in nothing else)
# Keys that never split groups nor count as "mixing": where a run is stored says nothing about its numbers.
NOT_SETTINGS = (*NOT_VARYING, "experiment")

# metric pattern → (better: "lower" | "higher", default SESOI or None = must be given with --sesoi, unit).
# Losses are in nats (cross-entropy; MSE runs should give their own --sesoi); accuracies are fractions.
METRIC_RULES: tuple[tuple[str, str, float | None, str], ...] = (
    ("*_loss", "lower", 0.01, "nats"),
    ("*_acc", "higher", 0.005, ""),
    ("wall_s", "lower", None, "s"),
)
SUMMARY_METRICS = (*METRICS, *VAL_METRICS, "wall_s")  # the per-run numbers a summary carries (final values)


def _missing(v: Any) -> bool:
    """No number: absent, None, or NaN (a run that did not log the metric)."""
    return not isinstance(v, (int, float)) or isinstance(v, bool) or math.isnan(v)


def metric_rule(metric: str) -> tuple[str, float | None]:
    """(direction, default SESOI) of a metric from ``METRIC_RULES``; QueryError for a metric not in the table."""
    for pattern, better, sesoi, _ in METRIC_RULES:
        if fnmatch.fnmatchcase(metric, pattern):
            return better, sesoi
    if metric not in SUMMARY_METRICS:
        raise unknown_key_error(metric, SUMMARY_METRICS, "metric")
    raise QueryError(f"metric {metric!r} has no direction rule")  # pragma: no cover - every summary metric has one


def parse_metrics(spec: str) -> list[str]:
    """``test_loss,test_acc`` → the metrics, each one a run summary carries (a typo names the closest)."""
    ms = comma_list(spec)
    if not ms:
        raise QueryError("--metric names no metric (e.g. --metric test_loss)")
    for m in ms:
        if m not in SUMMARY_METRICS:
            raise unknown_key_error(m, SUMMARY_METRICS, "metric")
    return ms


def parse_sesoi(specs: Iterable[str], metrics: Sequence[str]) -> dict[str, float]:
    """``--sesoi M=V`` (repeatable, or comma lists) over the defaults of ``METRIC_RULES``, for each metric compared."""
    given: dict[str, float] = {}
    for spec in specs:
        for item in comma_list(spec):
            m, eq, v = item.partition("=")
            if not eq:
                raise QueryError(f"--sesoi {item!r} is not METRIC=VALUE (e.g. --sesoi test_loss=0.02)")
            if m not in metrics:
                raise QueryError(f"--sesoi {m}: not a compared metric ({', '.join(metrics)}; add it to --metric)")
            try:
                val = float(v)
            except ValueError:
                val = math.nan
            if not (val > 0 and math.isfinite(val)):
                raise QueryError(f"--sesoi {item}: the smallest effect of interest is a positive number")
            given[m] = val
    out = {}
    for m in metrics:
        default = metric_rule(m)[1]
        if m not in given and default is None:
            raise QueryError(f"{m} has no default smallest effect of interest: give one, e.g. --sesoi {m}=10")
        out[m] = given.get(m, default)
    return out


def _ident(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def label(values: dict[str, Any]) -> str:
    """``lr=0.1, optimizer=sgd`` (short key names, as the runs table's headers) or ``all runs``."""
    return ", ".join(f"{header(k, list(values))}={cell(k, v)}" for k, v in values.items()) or "all runs"


def short_label(values: dict[str, Any]) -> str:
    """The values alone when one key groups (``0.1``), else ``label``."""
    if len(values) == 1:
        return cell("", next(iter(values.values())))
    return label(values)


@dataclass
class Group:
    """Finished runs sharing ``values`` (they differ in the seed at most)."""

    values: dict[str, Any]
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def n_diverged(self) -> int:
        return sum(r["status"] == "diverged" for r in self.runs)

    def value(self, run: dict[str, Any], metric: str) -> float:
        """A run's final value of ``metric``; NaN for a diverged run or a missing value (never counted as data)."""
        v = run.get(metric)
        if run["status"] != "done" or not isinstance(v, (int, float)) or isinstance(v, bool):
            return math.nan
        return float(v)

    def by_seed(self) -> dict[Any, dict[str, Any]]:
        """seed → run; two runs of one seed (same setting stored twice, e.g. under two exp_names) is an error."""
        out: dict[Any, dict[str, Any]] = {}
        for r in self.runs:
            s = r.get("seed")
            if s in out:
                raise QueryError(f"{label(self.values)} has two runs of seed {s} ({_where(out[s])}, {_where(r)}): "
                                 f"filter on exp_name=… so that each seed appears once")
            out[s] = r
        return out


def _where(run: dict[str, Any]) -> str:
    return f"{run.get('experiment')}/{str(run['run_id'])[:8]}"


def split_finished(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(finished runs, the others: running, interrupted, failed, corrupt)."""
    return [r for r in rows if r.get("status") in FINISHED], [r for r in rows if r.get("status") not in FINISHED]


def unfinished_note(rows: list[dict[str, Any]]) -> str:
    """"left out 2 unfinished run(s): ab12cd34 (interrupted), …" or ""."""
    if not rows:
        return ""
    names = ", ".join(f"{str(r['run_id'])[:8]} ({r.get('status')})" for r in rows[:6])
    return f"left out {len(rows)} unfinished run(s): {names}{' …' if len(rows) > 6 else ''}"


def parse_keys(spec: str, rows: list[dict[str, Any]]) -> list[str]:
    """``--group-by a,b`` → keys, each a config key (or ``experiment``) the runs have."""
    keys = comma_list(spec)
    if not keys:
        raise QueryError("--group-by names no key (e.g. --group-by optimizer.lr)")
    known = known_columns(rows) - set(SUMMARY_METRICS) - {"status", "path", "epochs", "error"}
    for k in keys:
        if rows and k not in known:
            raise unknown_key_error(k, known, "group key")
    return keys


def settings_keys(rows: list[dict[str, Any]]) -> list[str]:
    """The keys that tell the settings of ``rows`` apart: the varying config keys but the seed."""
    return [k for k in varying_keys(rows) if k not in FOLD and k not in NOT_SETTINGS]


def _order(groups: list[Group], keys: Sequence[str]) -> list[Group]:
    return sorted(groups, key=lambda g: tuple(_sort_value(g.values[k]) for k in keys))


def group_runs(rows: list[dict[str, Any]], keys: Sequence[str]) -> list[Group]:
    """Finished ``rows`` grouped by the values of ``keys`` (ordered by them).

    A group whose runs also differ in another key than the seed would average different settings: QueryError
    naming the keys (add them to the grouping or filter on them).
    """
    by: dict[tuple, Group] = {}
    for r in rows:
        vals = {k: r.get(k) for k in keys}
        by.setdefault(tuple(_ident(v) for v in vals.values()), Group(vals)).runs.append(r)
    groups = _order(list(by.values()), keys)
    mixed = sorted({k for g in groups for k in settings_keys(g.runs) if k not in keys})
    if mixed:
        raise QueryError(f"each group would average runs that also differ in {', '.join(mixed)}: add "
                         f"{'it' if len(mixed) == 1 else 'them'} to --group-by, or filter (e.g. "
                         f"{mixed[0]}={_example(rows, mixed[0])})")
    return groups


def _example(rows: list[dict[str, Any]], key: str) -> str:
    vals = sorted({_ident(r.get(key)) for r in rows})
    return str(json.loads(vals[0])) if vals else "…"


def group_table_rows(groups: list[Group], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """One dict per group: its key values, ``n``, ``diverged``, ``seeds``, ``run_ids`` and per metric the mean
    (``M``), the 95 % t half-width (``M_ci95``, NaN below two runs) and the runs it used (``M_n``)."""
    from revgn_cli.stats import mean_interval

    out = []
    for g in groups:
        row: dict[str, Any] = {**g.values, "n": g.n, "diverged": g.n_diverged,
                               "seeds": sorted((r.get("seed") for r in g.runs), key=_sort_value),
                               "run_ids": [r["run_id"] for r in g.runs]}
        for m in metrics:
            mean, half, n = mean_interval([g.value(r, m) for r in g.runs])
            row.update({m: None if n == 0 else mean, f"{m}_ci95": None if n < 2 else half, f"{m}_n": n})
        out.append(row)
    return out


# --- paired comparisons ---------------------------------------------------------------------------------------------


@dataclass
class Comparison:
    """Group ``b`` against group ``a`` on one metric: the per-seed pairs, the judged differences."""

    metric: str
    a: Group
    b: Group
    better: str  # lower | higher
    pairs: dict[Any, tuple[float, float]]  # seed → (A's value, B's value); NaN for a diverged side
    verdict: Verdict  # of the oriented differences (> 0: B better)

    @property
    def diff(self) -> tuple[float, float]:
        """(mean of B − A in the metric's units, its 95 % half-width): the verdict's mean, oriented back."""
        sign = -1.0 if self.better == "lower" else 1.0
        return sign * self.verdict.mean, self.verdict.half

    def means(self) -> tuple[float, float]:
        """A's and B's means over the seeds where both are finite (so B − A is their difference)."""
        fin = [(a, b) for a, b in self.pairs.values() if math.isfinite(a) and math.isfinite(b)]
        if not fin:
            return math.nan, math.nan
        return sum(a for a, _ in fin) / len(fin), sum(b for _, b in fin) / len(fin)


@dataclass
class CompareResult:
    key: str
    baseline: Group
    groups: list[Group]
    comparisons: list[Comparison]  # Holm-adjusted over all of them when more than one
    unpaired: list[str]  # "seed 3 of lr=0.1 (ab12cd34): no lr=0.03 run with seed 3"
    unfinished: str

    @property
    def family(self) -> int:
        return len(self.comparisons)


def compare_groups(rows: list[dict[str, Any]], key: str, metrics: Sequence[str], sesoi: dict[str, float],
                   baseline: str | None = None) -> CompareResult:
    """Runs that differ only in ``key`` and the seed → each group against the baseline group, per metric.

    Args:
        rows: run summaries with final metrics (any status; unfinished ones are left out and named).
        key: the config key whose values form the groups (e.g. ``optimizer.lr``).
        metrics: metrics to compare; ``sesoi``: metric → smallest effect of interest (``parse_sesoi``).
        baseline: the value of ``key`` every other group is compared with (default: the first in order).
    """
    finished, unfinished = split_finished(rows)
    known = known_columns(rows) - set(SUMMARY_METRICS)
    if rows and key not in known:
        raise unknown_key_error(key, known, "--by key")
    if not finished:
        raise QueryError("no finished (done/diverged) run matches: `revgn runs` lists them")
    other = [k for k in settings_keys(finished) if k != key]
    if other:
        vals = ", ".join(sorted({cell(other[0], r.get(other[0])) for r in finished}))
        raise QueryError(f"these runs also differ in {', '.join(other)} ({other[0]}: {vals}): filter so that only "
                         f"{key} and the seed differ (e.g. {other[0]}={_example(finished, other[0])})")
    for m in metrics:
        if m in VAL_METRICS and all(_missing(r.get(m)) for r in finished):
            raise QueryError(f"no matching run logged {m}: only runs that hold out a validation split do "
                             "(regime.val_size > 0, e.g. the tuning runs of `revgn tune`)")
    groups = group_runs(finished, [key])
    if len(groups) < 2:
        raise QueryError(f"{key} has one value ({short_label(groups[0].values)}) among the matching runs: "
                         "nothing to compare (`revgn runs --group-by " + key + "` lists the groups)")
    base = groups[0] if baseline is None else _find(groups, key, baseline)
    rest = [g for g in groups if g is not base]
    unpaired: list[str] = []
    raw: list[Comparison] = []
    a_seeds = base.by_seed()
    for g in rest:
        b_seeds = g.by_seed()
        for s in sorted(set(a_seeds) ^ set(b_seeds), key=_sort_value):
            have, lack = (g, base) if s in b_seeds else (base, g)
            run = (b_seeds if s in b_seeds else a_seeds)[s]
            unpaired.append(f"seed {s} of {label(have.values)} ({_where(run)}): no {label(lack.values)} run "
                            f"with seed {s}")
        common = sorted(set(a_seeds) & set(b_seeds), key=_sort_value)
        for m in metrics:
            better = metric_rule(m)[0]
            pairs = {s: (base.value(a_seeds[s], m), g.value(b_seeds[s], m)) for s in common}
            sign = 1.0 if better == "lower" else -1.0
            d = {s: sign * (a - b) for s, (a, b) in pairs.items()}  # > 0: B better
            raw.append(Comparison(m, base, g, better, pairs, judge(d, sesoi[m])))
    judged = judge_family([c.verdict for c in raw]) if len(raw) > 1 else [c.verdict for c in raw]
    for c, v in zip(raw, judged):
        c.verdict = v
    return CompareResult(key, base, groups, raw, list(dict.fromkeys(unpaired)), unfinished_note(unfinished))


def _find(groups: list[Group], key: str, value: str) -> Group:
    from revgn_cli.results.loader import _equal

    hits = [g for g in groups if _equal(g.values[key], value)]
    if not hits:
        have = ", ".join(short_label(g.values) for g in groups)
        raise QueryError(f"--baseline {value}: no group has {key}={value} (values: {have})")
    return hits[0]


def verdict_text(c: Comparison) -> str:
    """The shared verdict word, read for this comparison: ``HOLDS: B better`` / ``REVERSED: A better`` / …"""
    v = c.verdict
    return {"HOLDS": "HOLDS: B better", "REVERSED": "REVERSED: A better",
            "NEGLIGIBLE": f"NEGLIGIBLE: within ±{v.sesoi:g}", "INCONCLUSIVE": "INCONCLUSIVE",
            "INSUFFICIENT": f"INSUFFICIENT: {v.n} pair(s), 3 needed"}[v.verdict]
