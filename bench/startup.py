"""Start-up time of the CLI: `revgn --help`, `runs --help`, `train --help` (target < 0.3 s) and `revgn runs` on
50 runs (target < 1 s), each beside the floor of any Typer CLI (`python -c "import typer"`), alternating the
commands over repeats and printing medians, so a loaded machine shows in the floor as well.

The 50 runs are synthetic (config.yaml + meta.json + a small metrics.parquet, as `revgn train` writes them) in a
temporary results dir; nothing is trained.

    python bench/startup.py [--repeats 5] [--smoke]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {"--help": 0.3, "runs --help": 0.3, "train --help": 0.3, "runs (50 runs)": 1.0, "runs --sort nosuchkey": 1.0,
           "runs exp_name=nosuch": 1.0}


def make_runs(root: Path, n: int) -> None:
    """``n`` finished runs of one lr × seed grid, written the way `revgn train` writes them."""
    import yaml

    from revgn_cli.config import compose_config, config_dict, run_id
    from revgn_cli.results.store import RunDir

    base = compose_config(["dataset=digits", "model=tiny", "exp_name=bench", "train.epochs=2"])
    for i in range(n):
        cfg = base
        cfg.seed, cfg.optimizer.lr = i, (0.1, 0.01)[i % 2]
        run = RunDir(root / "bench" / run_id(cfg))
        run.path.mkdir(parents=True)
        run.config_path.write_text(yaml.safe_dump(config_dict(cfg), sort_keys=False))
        rows = [{"run_id": run.run_id, "epoch": float(e), "step": e, "split": "epoch", "train_loss": 1.0 / (e + 1),
                 "test_loss": 1.1 / (e + 1), "test_acc": 0.5 + e / 10} for e in range(3)]
        run.write_rows(rows)
        run.meta_path.write_text(json.dumps({"status": "done", "epochs_done": 2, "wall_s": 1.0,
                                             "final": {k: rows[-1][k] for k in ("train_loss", "test_loss", "test_acc")}}))


def seconds(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if r.returncode not in (0, 2) or (r.returncode == 2 and "nosuch" not in " ".join(cmd)):
        raise subprocess.CalledProcessError(r.returncode, cmd)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="one repeat, 5 runs: checks the bench works, not timings")
    args = ap.parse_args()
    repeats, n_runs = (1, 5) if args.smoke else (args.repeats, 50)
    cli = [sys.executable, "-m", "revgn_cli.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        make_runs(Path(tmp), n_runs)
        cmds = {"floor: import typer": [sys.executable, "-c", "import typer"],
                "--help": cli + ["--help"], "runs --help": cli + ["runs", "--help"],
                "train --help": cli + ["train", "--help"], f"runs ({n_runs} runs)": cli + ["runs", "--results", tmp],
                # Error paths must cost no more than the listing they replace (exit 2: not checked).
                "runs --sort nosuchkey": cli + ["runs", "--results", tmp, "--sort", "nosuchkey"],
                "runs exp_name=nosuch": cli + ["runs", "--results", tmp, "exp_name=nosuch"]}
        times: dict[str, list[float]] = {k: [] for k in cmds}
        for _ in range(repeats):
            for name, cmd in cmds.items():
                times[name].append(seconds(cmd))
    floor = statistics.median(times["floor: import typer"])
    print(f"{'command':24s} {'median s':>9s} {'/ floor':>8s}  target")
    for name, ts in times.items():
        med = statistics.median(ts)
        target = TARGETS.get(name)
        verdict = "" if target is None else f"< {target} s: {'met' if med < target else 'MISSED'}"
        print(f"{name:24s} {med:9.3f} {med / floor:8.2f}  {verdict}")


if __name__ == "__main__":
    main()
