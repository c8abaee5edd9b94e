"""End-to-end CLI tests through Typer's runner on tiny digits configs."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from revgn_cli.cli import app
from revgn_cli.results import load_runs, run_summaries

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, ["--quiet", *args])


def only_run(results):
    runs = run_summaries(results)
    assert len(runs) == 1, runs
    return runs[0]


@pytest.mark.parametrize("opt", ["gn", "adam", "sgd"])
def test_train_writes_a_valid_run_dir(tiny, results, opt):
    r = invoke("train", f"optimizer={opt}", *tiny)
    assert r.exit_code == 0, r.output
    run = only_run(results)
    assert run["status"] == "done" and run["optimizer.name"] == opt
    d = results / "default" / run["run_id"]
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    assert cfg["optimizer"]["name"] == opt and cfg["dataset"]["name"] == "digits"
    meta = json.loads((d / "meta.json").read_text())
    assert meta["status"] == "done" and meta["device"] == "cpu" and meta["seed"] == 42 and meta["torch"]
    rows = pd.read_parquet(d / "metrics.parquet")
    assert list(rows.columns[:4]) == ["run_id", "epoch", "step", "split"]
    ep = rows[rows.split == "epoch"]
    assert list(ep.epoch) == [0.0, 1.0, 2.0]
    for col in ("train_loss", "train_acc", "test_loss", "test_acc", "ntk_sim_init", "ntk_feat_sim_init", "cka_block1",
                "cka_block2", "cka_F1", "cka_G1", "cka_F2", "cka_G2", "wcos_F1", "wcos_G2"):
        assert ep[col].notna().all(), col
    assert ep.ntk_feat_velocity.iloc[1:].notna().all() and (ep.cka_G2 == ep.cka_block2).all()
    steps = rows[rows.split == "step"]
    assert len(steps) == 2 * 6  # 1347 train samples / 256 → 6 batches (last one kept)
    assert steps["loss_change_pct"].notna().all()
    assert steps.step.tolist() == list(range(1, 13))
    # Per-epoch aggregates of the loss change over that epoch's 6 updates (none at init).
    for e in (1, 2):
        lc = steps[(steps.epoch > e - 1) & (steps.epoch <= e)].loss_change_pct
        row = ep[ep.epoch == e]
        assert row.loss_change_pct_mean.item() == pytest.approx(lc.mean())
        assert row.loss_change_pct_median.item() == pytest.approx(lc.median())
    assert ep[ep.epoch == 0][["loss_change_pct_mean", "loss_change_pct_median"]].isna().all(axis=None)


def test_loss_change_every_k_updates(tiny, results):
    r = invoke("train", "optimizer=sgd", *tiny, "metrics.every=0", "metrics.loss_change_every=4")
    assert r.exit_code == 0, r.output
    rows = pd.read_parquet(results / "default" / only_run(results)["run_id"] / "metrics.parquet")
    steps = rows[rows.split == "step"]
    assert steps[steps.loss_change_pct.notna()].step.tolist() == [4, 8, 12]
    assert steps[steps.batch_loss_after.notna()].step.tolist() == [4, 8, 12]
    ep1 = rows[(rows.split == "epoch") & (rows.epoch == 1)]
    assert ep1.loss_change_pct_mean.item() == pytest.approx(steps[steps.step == 4].loss_change_pct.item())


def test_diagnostics_every_k_steps(tiny, results):
    """metrics.unit=step: NTK/CKA/weights every k updates (and the last one) in the step rows, the init row as the
    reference, none in later epoch rows; velocity is per epoch over the fractional epochs between logged steps."""
    r = invoke("train", "optimizer=adam", *tiny, "metrics.unit=step", "metrics.every=4")
    assert r.exit_code == 0, r.output
    rows = pd.read_parquet(results / "default" / only_run(results)["run_id"] / "metrics.parquet")
    steps, ep = rows[rows.split == "step"], rows[rows.split == "epoch"]
    logged = steps[steps.ntk_sim_init.notna()]
    assert logged.step.tolist() == [4, 8, 12]  # 12 updates: every 4th, the last one among them
    for col in ("ntk_dist_init", "ntk_probe_sim", "ntk_feat_sim_init", "cka_block1", "cka_block2", "cka_F1", "wcos_F1",
                "wcos_G2"):
        assert logged[col].notna().all() and steps[~steps.step.isin([4, 8, 12])][col].isna().all(), col
    assert ep[ep.epoch == 0].ntk_sim_init.item() == pytest.approx(1.0)
    assert ep[ep.epoch > 0].ntk_sim_init.isna().all() and ep.test_acc.notna().all()
    # Adam moves the weights at every update: the kernel moves, and its velocity is distance / fractional epochs.
    assert (logged.ntk_dist_init > 0).all() and (logged.ntk_velocity > 0).all()
    assert logged.epoch.tolist() == pytest.approx([4 / 6, 8 / 6, 2.0])


def test_rerun_is_skipped_and_force_retrains(tiny, results):
    assert invoke("train", *tiny).exit_code == 0
    r = invoke("train", *tiny)
    assert r.exit_code == 0 and "skipped" in r.output
    (first,) = [m for m in results.glob("*/*/meta.json")]
    before = json.loads(first.read_text())
    r = invoke("train", "--force", *tiny)
    assert r.exit_code == 0 and "done" in r.output and "replaced (--force)" in r.output
    assert len(run_summaries(results)) == 1
    # The earlier run is never deleted: it moved whole (meta, rows, checkpoint) to the quarantine, unchanged.
    (old,) = list((results / ".quarantine").glob(f"*/{first.parent.parent.name}/{first.parent.name}"))
    assert json.loads((old / "meta.json").read_text()) == before
    assert (old / "metrics.parquet").is_file() and (old / "checkpoints" / "last.pt").is_file()
    assert "replaced by --force (was done)" in (old.parent.parent / "REASONS.txt").read_text()
    assert json.loads(first.read_text())["status"] == "done" and (first.parent / "metrics.parquet").is_file()


def test_mnist5k_full_batch_run(results):
    r = invoke("train", "dataset=mnist5k", "model=tiny", "regime.n_samples=256", "train.epochs=2",
               "metrics.probe_size=4", "metrics.cka_probe_size=32", f"results_dir={results}")
    assert r.exit_code == 0, r.output
    df = load_runs(results)
    assert set(df["dataset.name"]) == {"mnist5k"}
    ep = df[df.split == "epoch"]
    assert ep.train_loss.iloc[-1] < ep.train_loss.iloc[0]
    # Every diagnostic of the default metrics config, every epoch (metrics.every=1 is the default).
    for col in ("ntk_sim_init", "ntk_dist_init", "ntk_probe_sim", "ntk_feat_sim_init", "cka_block1", "cka_block2",
                "cka_F1", "cka_G1", "cka_F2", "cka_G2", "wcos_F1", "wcos_G2", "wnorm_ratio_F2"):
        assert ep[col].notna().all(), col
    assert ep.ntk_feat_velocity.iloc[1:].notna().all()
    assert ep.ntk_velocity.iloc[1:].notna().all()
    after = ep[ep.epoch > 0]
    assert after.loss_change_pct_mean.notna().all() and after.loss_change_pct_median.notna().all()
    steps = df[df.split == "step"]
    assert len(steps) == 2 and steps.loss_change_pct.notna().all() and steps.batch_loss_after.notna().all()


def test_runs_lists_and_filters(tiny, results):
    assert invoke("train", "optimizer=sgd", *tiny).exit_code == 0
    assert invoke("train", "optimizer=adam", *tiny).exit_code == 0
    r = invoke("runs", "--results", str(results))
    assert r.exit_code == 0 and "2 run(s)" in r.output and "sgd" in r.output and "adam" in r.output
    r = invoke("runs", "--results", str(results), "optimizer.name=adam")
    assert "1 run(s)" in r.output and "adam" in r.output


def test_sweep_basic_launcher_makes_four_runs(tiny, results):
    r = invoke("sweep", *tiny, "optimizer=sgd", "optimizer.lr=0.1,0.01", "model.init_std=1e-2,1e-3")
    assert r.exit_code == 0, r.output
    runs = run_summaries(results)
    assert len(runs) == 4 and {x["status"] for x in runs} == {"done"}
    assert {(x["optimizer.lr"], x["model.init_std"]) for x in runs} == {(0.1, 1e-2), (0.1, 1e-3), (0.01, 1e-2), (0.01, 1e-3)}
    # a second sweep skips all four
    r = invoke("sweep", *tiny, "optimizer=sgd", "optimizer.lr=0.1,0.01", "model.init_std=1e-2,1e-3")
    assert r.exit_code == 0 and "4 skipped" in r.output


def test_sweep_joblib_launcher_runs_in_parallel(tiny, results):
    r = invoke("sweep", *tiny, "optimizer=sgd", "optimizer.lr=0.1,0.01", "model.init_std=1e-2,1e-3",
               "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert r.exit_code == 0, r.output
    runs = run_summaries(results)
    assert len(runs) == 4 and {x["status"] for x in runs} == {"done"}
    pids = {x["meta.pid"] for x in runs}
    assert len(pids) == 2  # two worker processes shared the four jobs


def test_sweep_dry_run_lists_jobs(tiny, results):
    r = invoke("sweep", "--dry-run", *tiny, "optimizer.lr=0.1,0.01,0.001")
    assert r.exit_code == 0 and "3 job(s)" in r.output
    assert not results.exists() or not run_summaries(results)


def test_expand_follows_hydra_axis_replacement():
    """A command-line value for a key the preset sweeps replaces that axis (as Hydra's BasicSweeper does)."""
    from revgn_cli.sweep import expand

    full = expand(["experiment=spawn_quick"])
    assert len({j.cfg.optimizer.name for j in full}) == 3
    one = expand(["experiment=spawn_quick", "optimizer=sgd"])
    assert [j.cfg.optimizer.name for j in one] == ["sgd"]
    two = expand(["experiment=spawn_quick", "optimizer=sgd,adam"])
    assert sorted(j.cfg.optimizer.name for j in two) == ["adam", "sgd"]


def test_submitit_slurm_launcher_composes_with_cluster_keys(tiny):
    """No cluster here: check the SLURM launcher config composes with the documented keys (docs/cluster.md)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from revgn_cli.config import VERSION_BASE, conf_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=VERSION_BASE):
        node = compose("config", overrides=["hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu",
                                            "hydra.launcher.gpus_per_node=1", "hydra.launcher.timeout_min=600",
                                            "hydra.launcher.mem_gb=64", "hydra.launcher.cpus_per_task=8"],
                       return_hydra_config=True)
    launcher = node.hydra.launcher
    assert "submitit" in launcher._target_ and "Slurm" in launcher._target_
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min) == ("gpu", 1, 600)
    assert (launcher.mem_gb, launcher.cpus_per_task) == (64, 8)
    # the sweep front end accepts the launcher overrides and lists the jobs without touching a cluster
    r = invoke("sweep", "--dry-run", *tiny, "optimizer.lr=0.1,0.01", "hydra/launcher=submitit_slurm",
               "hydra.launcher.partition=gpu")
    assert r.exit_code == 0 and "2 job(s)" in r.output, r.output
