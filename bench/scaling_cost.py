"""The scale study's cost model against the wall time its runs took: measured / model, per kind of run.

Reads finished run directories (config.yaml + meta.json; default: the study's archive, docs/data/scaling_runs),
prices each run with the design's cost model (conf/study/scaling.yaml ``cost``: revgn_cli.studies.scaling.
estimate_run_s) and prints, per kind of run (method, width, batch, epochs, diagnostics, training images), the mean
ratio of its measured wall time to the model's — under the design's constants and under constants refitted to these
runs (non-negative least squares on the relative error; the fit is printed in the design's YAML form, ready to paste).

A run's cost is linear in the constants, so each constant's feature is the model evaluated with that constant at 1
and every other at 0: the fit prices runs with the very function the plan uses. Runs that were resumed are left out
(their wall time covers only a part of the run). Measured walls are those of the runs as they ran, two at a time on
the study's 2-core CPU, which is what the constants stand for.

    python bench/scaling_cost.py [RUN_ROOT ...]
    python bench/scaling_cost.py --smoke   # the first 24 runs of the archive: every path runs in seconds
"""
from __future__ import annotations

import argparse
import collections
import copy
import json
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

from revgn_cli.config import Config, to_config
from revgn_cli.results.store import RunDir
from revgn_cli.studies.scaling import estimate_run_s, load_design, train_images

ARCHIVE = Path(__file__).resolve().parents[1] / "docs" / "data" / "scaling_runs"


def finished_runs(roots: list[Path], limit: int | None = None) -> list[tuple[Config, float]]:
    """(config, wall seconds) of every run under ``roots`` that finished in one go, each run id once; the first
    ``limit`` only (``--smoke``: it stops reading there rather than parse every archived config)."""
    from omegaconf import OmegaConf

    seen, out = set(), []
    for run in (RunDir(p.parent) for p in sorted(p for r in roots for p in r.glob("**/meta.json"))):
        if limit is not None and len(out) >= limit:
            break
        meta = run.read_meta()
        if meta.get("status") != "done" or meta.get("resumed") or not meta.get("wall_s") or run.run_id in seen:
            continue
        seen.add(run.run_id)
        out.append((to_config(OmegaConf.load(run.config_path)), float(meta["wall_s"])))
    return out


def unit_costs(cost: dict) -> list[tuple[str, str | None, dict]]:
    """One cost dict per constant of ``cost`` (key, method or None): that constant 1, every other 0."""
    zero = {k: ({m: 0.0 for m in v} if isinstance(v, dict) else 0.0) for k, v in cost.items()}
    out = []
    for k, v in cost.items():
        for m in (v if isinstance(v, dict) else [None]):
            c = copy.deepcopy(zero)
            if m is None:
                c[k] = 1.0
            else:
                c[k][m] = 1.0
            out.append((k, m, c))
    return out


def kind(cfg: Config) -> str:
    return (f"{cfg.optimizer.name:<4} h {cfg.model.hidden:>4} batch {cfg.regime.batch_size:>4} "
            f"epochs {cfg.train.epochs:>3} every {cfg.metrics.every} images {train_images(cfg):>4}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("roots", nargs="*", type=Path, default=[ARCHIVE])
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args()
    cost = dict(load_design().cost)
    cost.setdefault("update_batch3_s", {m: 0.0 for m in cost["update_fixed_s"]})
    runs = finished_runs(a.roots, 24 if a.smoke else None)
    if not runs:
        raise SystemExit(f"no finished run under {', '.join(map(str, a.roots))}")
    units = unit_costs(cost)
    X = np.array([[estimate_run_s(cfg, c) for _, _, c in units] for cfg, _ in runs])
    y = np.array([w for _, w in runs])
    design = np.array([estimate_run_s(cfg, cost) for cfg, _ in runs])
    coef, _ = nnls(X / y[:, None], np.ones_like(y))  # relative error: each run counts alike, short or long
    fit = X @ coef
    groups: dict[str, list[int]] = collections.defaultdict(list)
    for i, (cfg, _) in enumerate(runs):
        groups[kind(cfg)].append(i)
    print(f"{len(runs)} runs; measured wall / model, mean over the runs of a kind (min–max):")
    print(f"{'kind':<58} {'runs':>4} {'wall s':>7}  {'design':>16}  {'refit':>16}")
    for g, idx in sorted(groups.items()):
        d, f = y[idx] / design[idx], y[idx] / fit[idx]
        print(f"{g:<58} {len(idx):>4} {y[idx].mean():>7.0f}  {d.mean():5.2f} ({d.min():.2f}–{d.max():.2f})"
              f"  {f.mean():5.2f} ({f.min():.2f}–{f.max():.2f})")
    geo = lambda r: float(np.exp(np.mean(np.log(r))))  # noqa: E731
    print(f"all runs: geometric mean {geo(y / design):.2f} (design), {geo(y / fit):.2f} (refit)")
    print("refit (conf/study/scaling.yaml `cost`):")
    fitted: dict = {}
    for (k, m, _), v in zip(units, coef):
        if m is None:
            fitted[k] = round(float(v), 3)
        else:
            fitted.setdefault(k, {})[m] = round(float(v), 3)
    for k, v in fitted.items():
        flow = json.dumps(v).replace('"', "")
        print(f"  {k}: {flow}")


if __name__ == "__main__":
    main()
