"""Parent/child spawning and the error barrier (docs/studies.md; Fort et al. 2020, NeurIPS, "Deep learning versus kernel
learning", §4).

For every parent run of a preset's grid (e.g. ``experiment=spawn_quick``: GN, Adam, SGD):
1. train the parent with ``train.keep_checkpoints`` = the spawn epochs (``checkpoints/epoch_<t>.pt``);
2. for every spawn epoch t, train two children from θ_t (``train.init_from``; weights only — the children start a
   fresh optimiser state) with different batch orders (``train.data_seed`` = ``extra.spawn.child_seeds``) for the
   parent's remaining ``train.epochs − t`` epochs (or ``extra.spawn.child_epochs``);
3. evaluate the test error along the straight line θ(α) = (1 − α)θ₁ + αθ₂ on an α grid (α = 0 and 1 included) and
   record the error barrier max_α err(α) − (err(θ₁) + err(θ₂))/2, the same for the test loss, the fraction of test
   inputs on which the children disagree and that disagreement normalised by what two independent classifiers with
   the same error rates would show (``revgn_cli.metrics.normalised_function_distance``).

Every training run goes through ``revgn_cli.train.runner.execute`` — finished runs are skipped, interrupted ones
resume — so rerunning the study only redoes the (cheap) path evaluation. The result is one row per (parent, t) in
``<results_dir>/<exp_name>/barriers.parquet`` (written atomically; see ``BARRIER_COLUMNS``).
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from revgn_cli.config import Config, ConfigError, compose_config, run_id

BARRIERS_FILE = "barriers.parquet"
# One row per (parent run, spawn epoch). Errors are fractions of the test set (not %).
BARRIER_COLUMNS = (
    "experiment", "parent_run_id", "optimizer", "lr", "seed", "dataset", "spawn_epoch", "child_epochs",
    "child_a", "child_b", "data_seed_a", "data_seed_b", "status_a", "status_b",
    "err_a", "err_b", "loss_a", "loss_b", "barrier", "loss_barrier", "disagreement", "function_distance",
    "weight_distance", "alphas", "path_err", "path_loss",
)


@dataclass(frozen=True)
class SpawnSettings:
    epochs: tuple[int, ...]
    child_seeds: tuple[int, int]
    child_epochs: int | None
    alphas: int

    @classmethod
    def from_config(cls, cfg: Config) -> "SpawnSettings":
        sp = dict((cfg.extra or {}).get("spawn") or {})
        epochs = tuple(int(e) for e in sp.get("epochs", cfg.train.keep_checkpoints) or ())
        seeds = tuple(int(s) for s in sp.get("child_seeds", (cfg.seed + 1, cfg.seed + 2)))
        ce = sp.get("child_epochs")
        alphas = int(sp.get("alphas", 11))
        if not epochs:
            raise ConfigError("the spawn study needs spawn epochs: extra.spawn.epochs (e.g. experiment=spawn_quick)")
        if len(seeds) != 2 or seeds[0] == seeds[1]:
            raise ConfigError(f"extra.spawn.child_seeds must be two different seeds, got {list(seeds)}")
        if alphas < 2:
            raise ConfigError(f"extra.spawn.alphas must be >= 2 (α = 0 and 1), got {alphas}")
        if ce is not None and int(ce) < 1:
            raise ConfigError(f"extra.spawn.child_epochs must be >= 1 or null, got {ce}")
        bad = [e for e in epochs if not 0 <= e < cfg.train.epochs]
        if bad:
            raise ConfigError(f"spawn epochs {bad} are outside [0, train.epochs={cfg.train.epochs})")
        if cfg.regime.name == "full_batch":
            raise ConfigError("the spawn study needs regime=mini_batch: in full batch both children see the same "
                              "batches and coincide")
        return cls(epochs, (seeds[0], seeds[1]), None if ce is None else int(ce), alphas)

    def alpha_grid(self) -> list[float]:
        return [float(a) for a in np.linspace(0.0, 1.0, self.alphas)]


def _quote(value: str) -> str:
    """A Hydra override value that survives any path (quoted, with the quote escaped)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def child_overrides(parent_overrides: Sequence[str], ckpt: Path, data_seed: int, epochs: int) -> list[str]:
    return [*parent_overrides, f"train.init_from={_quote(str(ckpt))}", f"train.data_seed={data_seed}",
            f"train.epochs={epochs}", "train.keep_checkpoints=[]"]


@torch.no_grad()
def _predict(model: torch.nn.Module, x: torch.Tensor, chunk: int) -> torch.Tensor:
    return torch.cat([model(x[i: i + chunk]).argmax(dim=1) for i in range(0, x.shape[0], chunk)])


def compare_children(cfg_a: Config, cfg_b: Config, alphas: Sequence[float]) -> dict[str, Any]:
    """Error / loss along θ(α) = (1 − α)θ_a + αθ_b on the test set, the barriers and the function distance."""
    from revgn_cli.metrics import error_barrier, interpolate_params, normalised_function_distance
    from revgn_cli.metrics.function_space import disagreement
    from revgn_cli.train.evaluate import evaluate
    from revgn_cli.train.loop import build_model, load_checkpoint_file, prepare_data
    from revgn_cli.train.runner import run_dir_for
    from revgn_cli.train.runtime import resolve_device, resolve_dtype

    device = resolve_device(cfg_a.device)
    td = prepare_data(cfg_a, device)
    dtype = resolve_dtype(cfg_a.precision)
    models = []
    for cfg in (cfg_a, cfg_b):
        m = build_model(cfg, td.data, device, dtype)
        m.load_state_dict(load_checkpoint_file(run_dir_for(cfg).ckpt_path)["model"])
        models.append(m.eval())
    a, b = models
    # The fixed tensors (expansions C, read-out U) come from the same parent checkpoint: only θ may differ.
    for (n, ba), bb in zip(a.named_buffers(), b.buffers()):
        if not torch.equal(ba, bb):
            raise ConfigError(f"children differ in the fixed buffer {n}: they do not share a parent")
    pa = [p.detach().clone() for p in a.trainable()]
    pb = [p.detach().clone() for p in b.trainable()]
    C, chunk, loss = td.data.n_classes, cfg_a.train.eval_chunk, cfg_a.train.loss
    path_err, path_loss = [], []
    probe = build_model(cfg_a, td.data, device, dtype)
    probe.load_state_dict(a.state_dict())
    for alpha in alphas:
        with torch.no_grad():
            for p, q in zip(probe.trainable(), interpolate_params(pa, pb, alpha)):
                p.copy_(q)
        test_loss, test_acc = evaluate(probe, td.x_te, td.y_te, C, loss, chunk)
        path_err.append(1.0 - test_acc)
        path_loss.append(test_loss)
    pred_a, pred_b = _predict(a, td.x_te, chunk), _predict(b, td.x_te, chunk)
    dist = math.sqrt(sum(float((x - y).double().pow(2).sum()) for x, y in zip(pa, pb)))
    return {
        "err_a": path_err[0], "err_b": path_err[-1], "loss_a": path_loss[0], "loss_b": path_loss[-1],
        "barrier": error_barrier(path_err),
        "loss_barrier": max(path_loss) - 0.5 * (path_loss[0] + path_loss[-1]),
        "disagreement": disagreement(pred_a, pred_b),
        "function_distance": normalised_function_distance(pred_a, pred_b, td.y_te.to(pred_a.device), C),
        "weight_distance": dist,
        "alphas": [float(x) for x in alphas], "path_err": path_err, "path_loss": path_loss,
    }


def barriers_path(results_dir: str | Path, exp_name: str) -> Path:
    return Path(results_dir).expanduser() / exp_name / BARRIERS_FILE


def write_barriers(path: Path, rows: list[dict[str, Any]]) -> None:
    """Atomically write the rows (in ``BARRIER_COLUMNS`` order); the file is the figure's only input besides runs."""
    from revgn_cli.results.store import atomic_write_bytes

    df = pd.DataFrame(rows, columns=list(BARRIER_COLUMNS))
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue())


def read_barriers(path: Path) -> pd.DataFrame:
    from revgn_cli.results.store import StoreError

    try:
        return pd.read_parquet(path)
    except FileNotFoundError:
        raise
    except Exception as e:  # truncated or foreign file
        raise StoreError(f"unreadable {path}: {str(e).splitlines()[0]}") from e


Log = Callable[[str], None]


def run_spawn_study(overrides: Sequence[str], *, force: bool = False, log: Log | None = None,
                    reporter_factory: Callable[[], Any] | None = None) -> dict[Path, pd.DataFrame]:
    """Train parents and children (skipping finished runs), evaluate every child pair, write barriers.parquet.

    ``overrides`` are Hydra overrides with the preset (``experiment=spawn_quick``); the parents are the preset's
    grid (``revgn_cli.sweep.expand``). Returns {path of each barriers.parquet written: its rows}.
    """
    from revgn_cli.sweep import expand
    from revgn_cli.train.runner import execute, run_dir_for

    log = log or (lambda s: None)
    new_reporter = reporter_factory or (lambda: None)
    jobs = expand(list(overrides))
    rows_by_file: dict[Path, list[dict[str, Any]]] = {}
    for job in jobs:
        parent = job.cfg
        sp = SpawnSettings.from_config(parent)
        p_ov = list(job.overrides)
        if sorted(set(parent.train.keep_checkpoints)) != sorted(set(sp.epochs)):
            # The parent must keep a checkpoint at every spawn epoch (the presets interpolate them).
            p_ov.append(f"train.keep_checkpoints=[{','.join(str(e) for e in sp.epochs)}]")
            parent = compose_config(p_ov)
        label = f"{parent.optimizer.name} (lr {parent.optimizer.lr:g}, seed {parent.seed})"
        out = execute(parent, force=force, reporter=new_reporter())
        log(f"parent {label}: {out.status} → {out.path}")
        prun = run_dir_for(parent)
        if out.status not in ("done", "skipped") or (out.status == "skipped"
                                                     and prun.read_meta().get("status") != "done"):
            log(f"  parent {run_id(parent)} did not finish cleanly ({prun.read_meta().get('status')}); no children")
            continue
        for t in sp.epochs:
            ckpt = prun.ckpt_dir / f"epoch_{t}.pt"
            if not ckpt.exists():
                raise ConfigError(f"parent {prun.run_id} has no checkpoint {ckpt.name} (rerun the study with --force "
                                  f"to retrain it with train.keep_checkpoints including {t})")
            n_child = sp.child_epochs if sp.child_epochs is not None else parent.train.epochs - t
            kids = []
            for s in sp.child_seeds:
                ccfg = compose_config(child_overrides(p_ov, ckpt, s, n_child))
                res = execute(ccfg, force=force, reporter=new_reporter())
                status = run_dir_for(ccfg).read_meta().get("status")
                log(f"  t={t} child data_seed={s}: {res.status} ({status}) → {res.path}")
                kids.append((ccfg, status))
            (ca, sa), (cb, sb) = kids
            row: dict[str, Any] = {
                "experiment": parent.exp_name, "parent_run_id": run_id(parent), "optimizer": parent.optimizer.name,
                "lr": float(parent.optimizer.lr), "seed": int(parent.seed), "dataset": parent.dataset.name,
                "spawn_epoch": int(t), "child_epochs": int(n_child), "child_a": run_id(ca), "child_b": run_id(cb),
                "data_seed_a": int(sp.child_seeds[0]), "data_seed_b": int(sp.child_seeds[1]),
                "status_a": sa, "status_b": sb,
            }
            if sa == "done" and sb == "done":
                row.update(compare_children(ca, cb, sp.alpha_grid()))
                log(f"  t={t}: err {row['err_a']:.4f}/{row['err_b']:.4f}, barrier {row['barrier']:.4f}, "
                    f"function distance {row['function_distance']:.3f}")
            rows_by_file.setdefault(barriers_path(parent.results_dir, parent.exp_name), []).append(row)
    written: dict[Path, pd.DataFrame] = {}
    for path, rows in rows_by_file.items():
        # Keep rows of other parents already in the file (e.g. another optimiser run earlier); replace ours.
        if path.exists():
            old = read_barriers(path)
            mine = {(r["parent_run_id"], r["spawn_epoch"]) for r in rows}
            keep = old[[(p, int(t)) not in mine for p, t in zip(old["parent_run_id"], old["spawn_epoch"])]]
            rows = keep.to_dict("records") + rows
        write_barriers(path, rows)
        written[path] = pd.read_parquet(path)
        log(f"wrote {len(rows)} row(s) → {path}")
    return written
