"""Renderings of grouped runs and paired comparisons: the terminal table, Markdown, CSV, JSON. Pure: rows or a
``CompareResult`` in, text or rich renderables out; the CLI prints them."""
from __future__ import annotations

import json
import math
from typing import Any, Sequence

from rich.table import Table

from revgn_cli.results.groups import CompareResult, label, short_label, verdict_text
from revgn_cli.results.table import cell, header, to_csv
from revgn_cli.results.views import _table
from revgn_cli.stats import diverged_text

GROUP_FORMATS = ("table", "csv", "json")
COMPARE_FORMATS = ("table", "md", "csv", "json")


def _num(v: Any, digits: str = ".4g") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return format(v, digits)


def mean_ci(mean: Any, half: Any) -> str:
    """``0.3755 ± 0.033`` (mean to 4 significant digits, the 95 % half-width to 2); the mean alone below two runs."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    if half is None or (isinstance(half, float) and not math.isfinite(half)):
        return _num(mean)
    if abs(half) <= 1e-12 * max(abs(mean), 1e-300):  # equal values: rounding noise, not spread
        half = 0.0
    return f"{_num(mean)} ± {_num(half, '.2g')}"


# --- runs --group-by ------------------------------------------------------------------------------------------------


def group_columns(keys: Sequence[str], metrics: Sequence[str], fmt: str) -> list[str]:
    """Table: keys, n, diverged, one mean ± interval cell per metric. CSV/JSON: every number apart + member ids."""
    if fmt == "table":
        return [*keys, "n", "diverged", *metrics]
    per_metric = [c for m in metrics for c in (m, f"{m}_ci95", f"{m}_n")]
    return [*keys, "n", "diverged", *per_metric, "seeds", "run_ids"]


def groups_table(rows: list[dict[str, Any]], keys: Sequence[str], metrics: Sequence[str], title: str) -> Table:
    caption = ("mean ± 95 % t-interval over each group's done runs; n: finished runs (seeds), diverged ones counted "
               "apart and left out of the means")
    t = _table(title, caption)
    cols = [*keys, "n", "diverged", *metrics]
    for k in keys:
        t.add_column(header(k, cols), justify="right" if any(isinstance(r.get(k), (int, float)) for r in rows)
                     else "left", no_wrap=True)
    t.add_column("n", justify="right")
    t.add_column("diverged", justify="right")
    for m in metrics:
        t.add_column(header(m, cols), justify="right", no_wrap=True)
    for r in rows:
        t.add_row(*[cell(k, r.get(k)) for k in keys], str(r["n"]), str(r["diverged"]) if r["diverged"] else "0",
                  *[mean_ci(r.get(m), r.get(f"{m}_ci95")) for m in metrics])
    return t


def groups_csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Member ids and seeds space-separated in one cell each (``pandas.read_csv`` keeps them as text)."""
    flat = [{**r, "seeds": " ".join(str(s) for s in r["seeds"]), "run_ids": " ".join(r["run_ids"])} for r in rows]
    return to_csv(flat, columns)


def groups_json(rows: list[dict[str, Any]], columns: list[str]) -> str:
    return json.dumps([{c: r.get(c) for c in columns} for r in rows], indent=1, default=str)


# --- compare --by -------------------------------------------------------------------------------------------------


def _p(v: float) -> str:
    if not math.isfinite(v):
        return "—"
    return "<0.0001" if v < 1e-4 else f"{v:.2g}"


COMPARE_HEAD = ("B", "metric", "A", "B mean", "n", "B − A", "p", "verdict")  # n: seed pairs judged


def compare_rows(res: CompareResult) -> list[list[str]]:
    """One text row per (group B, metric), in the order of ``COMPARE_HEAD``."""
    out = []
    for c in res.comparisons:
        a, b = c.means()
        d, half = c.diff
        v = c.verdict
        pairs = f"{v.n}" + (f" (+{v.n_nonfinite} div.)" if v.n_nonfinite else "")
        out.append([short_label(c.b.values), c.metric.replace("_", " "), _num(a), _num(b), pairs,
                    mean_ci(d if v.n else None, half), _p(v.p_adj), verdict_text(c)])
    return out


def compare_notes(res: CompareResult) -> list[str]:
    """What the reader needs to read the table right: the orientation, the SESOIs, Holm, unpaired, diverged."""
    base = label(res.baseline.values)
    directions = sorted({f"{c.metric.replace('_', ' ')}: {c.better} is better" for c in res.comparisons})
    sesoi = sorted({f"{c.metric} {c.verdict.sesoi:g}" for c in res.comparisons})
    others = [label(g.values) for g in res.groups if g is not res.baseline]
    bs = others[0] if len(others) == 1 else f"each other {res.key} value"
    notes = [f"A = {base} (baseline); B = {bs}; runs paired by seed; A and B mean over the paired seeds",
             f"B − A in the metric's units ({'; '.join(directions)}); HOLDS = B better beyond seed noise, "
             f"REVERSED = A better, NEGLIGIBLE = within ±SESOI ({', '.join(sesoi)})"]
    if res.family > 1:
        notes.append(f"p: Holm-adjusted over the {res.family} comparisons shown (verdicts judged on it)")
    div = {label(g.values): (g.n_diverged, g.n) for g in res.groups}
    if diverged_text(div):
        notes.append(diverged_text(div) + " (a pair with a diverged side is counted apart, not as evidence)")
    notes += [f"unpaired: {u} (left out)" for u in res.unpaired]
    if res.unfinished:
        notes.append(res.unfinished)
    return notes


def compare_table(res: CompareResult) -> Table:
    """The terminal table; the B column only when there are several B groups (the title names a lone one). Every
    value is shown whole (adjacent paddings collapse to fit 80 columns); only the verdict wraps if it must."""
    others = [short_label(g.values) for g in res.groups if g is not res.baseline]
    t = _table(f"{res.key}: A = {short_label(res.baseline.values)}, B = {', '.join(others)}")
    t.collapse_padding = True
    rows = compare_rows(res)
    keep = [i for i, h in enumerate(COMPARE_HEAD) if h != "B" or len(others) > 1]
    for i in keep:
        h = COMPARE_HEAD[i]
        width = max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
        t.add_column(h, justify="left" if h in ("B", "metric", "verdict") else "right",
                     min_width=None if h == "verdict" else width, no_wrap=h != "verdict")
    for row in rows:
        t.add_row(*[row[i] for i in keep])
    return t


def compare_markdown(res: CompareResult) -> str:
    """A GitHub-flavoured table with the notes as a list below: ready to paste."""
    head = [h if h != "B" else f"B ({res.key})" for h in COMPARE_HEAD]
    lines = [f"**{res.key}**: A = {short_label(res.baseline.values)}", "",
             "| " + " | ".join(head) + " |",
             "|" + "|".join("---" if h in ("B", "metric", "verdict") else "---:" for h in COMPARE_HEAD) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in compare_rows(res)]
    lines += [""] + [f"- {n}" for n in compare_notes(res)]
    return "\n".join(lines) + "\n"


def compare_records(res: CompareResult) -> list[dict[str, Any]]:
    """Raw numbers, one record per (group B, metric): for CSV / JSON and for tests."""
    out = []
    for c in res.comparisons:
        a, b = c.means()
        d, half = c.diff
        v = c.verdict
        out.append({"key": res.key, "a": c.a.values[res.key], "b": c.b.values[res.key], "metric": c.metric,
                    "better": c.better, "a_mean": a, "b_mean": b, "diff_b_minus_a": d, "ci95": half,
                    "n_pairs": v.n, "n_nonfinite": v.n_nonfinite, "p": v.p, "p_holm": v.p_adj, "p_tost": v.p_tost,
                    "p_tost_holm": v.p_tost_adj, "sesoi": v.sesoi, "verdict": v.verdict,
                    "seeds": sorted(c.pairs, key=str), "a_run_ids": [r["run_id"] for r in c.a.runs],
                    "b_run_ids": [r["run_id"] for r in c.b.runs]})
    return out


def compare_csv(res: CompareResult) -> str:
    recs = [{**r, "seeds": " ".join(map(str, r["seeds"])), "a_run_ids": " ".join(r["a_run_ids"]),
             "b_run_ids": " ".join(r["b_run_ids"])} for r in compare_records(res)]
    return to_csv(recs, list(recs[0])) if recs else ""


def compare_json(res: CompareResult) -> str:
    return json.dumps({"comparisons": compare_records(res), "unpaired": res.unpaired,
                       "notes": compare_notes(res)}, indent=1, default=str)


# --- the commands' bodies (the CLI passes its console) -------------------------------------------------------------


def _check_format(fmt: str, allowed: Sequence[str]) -> None:
    if fmt not in allowed:
        from revgn_cli.results.query import QueryError

        raise QueryError(f"--format {fmt!r} is not one of {', '.join(allowed)}")


def group_listing(rows: list[dict[str, Any]], results: str, group_by: str | None, columns: str | None,
                  sort: str | None, fmt: str, console: Any) -> None:
    """``revgn runs --group-by KEYS`` / ``--fold-seeds``: rows (summaries with metrics) → one row per group."""
    from revgn_cli.console import err
    from revgn_cli.results import groups as gr
    from revgn_cli.results.table import DEFAULT_METRICS, sort_rows

    _check_format(fmt, GROUP_FORMATS)
    finished, unfinished = gr.split_finished(rows)
    keys = gr.parse_keys(group_by, rows) if group_by else gr.settings_keys(finished)
    metrics = gr.parse_metrics(columns) if columns else list(DEFAULT_METRICS)
    table_rows = gr.group_table_rows(gr.group_runs(finished, keys), metrics)
    if sort:
        table_rows = sort_rows(table_rows, sort)
    cols = group_columns(keys, metrics, fmt)
    if fmt == "csv":
        console.file.write(groups_csv(table_rows, cols))
    elif fmt == "json":
        console.file.write(groups_json(table_rows, cols) + "\n")
    else:
        title = f"{len(table_rows)} group(s) of {len(finished)} finished run(s) in {results}"
        console.print(groups_table(table_rows, keys, metrics, title), highlight=False)
    note = gr.unfinished_note(unfinished)
    if note:
        err.print(f"note: {note}", highlight=False, soft_wrap=True)


def compare_listing(rows: list[dict[str, Any]], by: str, metric: str, sesoi: list[str], baseline: str | None,
                    fmt: str, console: Any) -> None:
    """``revgn compare --by KEY``: rows (summaries with metrics) → paired comparisons with verdicts."""
    from revgn_cli.results import groups as gr

    _check_format(fmt, COMPARE_FORMATS)
    metrics = gr.parse_metrics(metric)
    res = gr.compare_groups(rows, by, metrics, gr.parse_sesoi(sesoi, metrics), baseline)
    if fmt == "md":
        console.file.write(compare_markdown(res))
    elif fmt == "csv":
        console.file.write(compare_csv(res))
        from revgn_cli.console import err

        for n in [*(f"unpaired: {u} (left out)" for u in res.unpaired), res.unfinished]:
            if n:
                err.print(f"note: {n}", highlight=False, markup=False, soft_wrap=True)
    elif fmt == "json":
        console.file.write(compare_json(res) + "\n")
    else:
        console.print(compare_table(res), highlight=False)
        for n in compare_notes(res):
            console.print(n, highlight=False, markup=False)
