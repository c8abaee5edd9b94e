"""Hostile inputs: every bad override or file gives one clear error line, a non-zero exit, no traceback, and
leaves existing results untouched."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from revgn_cli.cli import app

runner = CliRunner()
BASE = ["optimizer=sgd", "dataset=digits", "model=tiny", "regime.n_samples=128", "train.epochs=1", "metrics.every=0", "device=cpu"]


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and ".lock" not in p.name}


@pytest.fixture(scope="module")
def existing(tmp_path_factory):
    """A results dir holding one finished run that no bad command may change."""
    res = tmp_path_factory.mktemp("hostile") / "results"
    r = runner.invoke(app, ["--quiet", "train", *BASE, f"results_dir={res}"])
    assert r.exit_code == 0, r.output
    return res


def assert_one_clear_error(result, *, contains: str | None = None) -> None:
    assert result.exit_code not in (0, None), result.output
    err_lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(err_lines) == 1, result.stderr
    assert err_lines[0].startswith("error:"), err_lines
    assert "Traceback" not in result.output
    if contains:
        assert contains.lower() in err_lines[0].lower(), err_lines[0]


TRAIN_CASES = {
    "unknown key": (["optimizer.lrr=1"], "lrr"),
    "unknown nested key": (["model.width=3"], "width"),
    "wrong type float": (["optimizer.lr=abc"], "optimizer.lr"),
    "wrong type int": (["seed=abc"], "seed"),
    "wrong type bool": (["model.first_block_linear=maybe"], "first_block_linear"),
    "unknown group option": (["optimizer=nope"], "optimizer/nope"),
    "unknown group": (["nogroup=x"], "nogroup"),
    "negative blocks": (["model.n_blocks=-1"], "model.n_blocks"),
    "negative width": (["model.hidden=-5"], "model.hidden"),
    "zero batch size": (["regime.batch_size=0"], "regime.batch_size"),
    "negative epochs": (["train.epochs=-1"], "train.epochs"),
    "lr nan": (["optimizer.lr=nan"], "optimizer.lr"),
    "lr negative": (["optimizer.lr=-0.1"], "optimizer.lr"),
    "lr inf": (["optimizer.lr=inf"], "optimizer.lr"),
    "beta out of range": (["optimizer=adam", "optimizer.beta1=1.5"], "beta1"),
    "unknown regulariser": (["regularizer.name=magic"], "regularizer.name"),
    "truncation drops every singular value": (["regularizer.rtol=2"], "rtol"),
    "unknown combine": (["optimizer.combine=avg"], "combine"),
    "unknown precision": (["precision=float16"], "precision"),
    "cuda without a GPU": (["device=cuda"], "cuda"),
    "batch larger than dataset": (["regime=mini_batch", "regime.batch_size=100000"], "batch_size"),
    "full-batch subset larger than dataset": (["regime.n_samples=100000"], "n_samples"),
    "probe larger than dataset": (["metrics.every=1", "metrics.probe_size=5000"], "probe_size"),
    "loss change every 0 updates": (["metrics.loss_change_every=0"], "metrics.loss_change_every"),
    "unknown diagnostics unit": (["metrics.unit=batch"], "metrics.unit"),
    "switch after the end": (["train.switch_epoch=50", "train.switch_to=adam"], "switch_epoch"),
    "switch to unknown optimiser": (["train.switch_epoch=1", "train.switch_to=lbfgs"], "switch_to"),
    "diverge factor zero": (["train.diverge_factor=0"], "diverge_factor"),
    "escaping experiment name": (["exp_name=../evil"], "exp_name"),
    "experiment name '.' (the results root)": (["exp_name=."], "exp_name"),
    "experiment name '.hydra' (Hydra's bookkeeping)": (["exp_name=.hydra"], "exp_name"),
    "experiment name with a separator": (["exp_name=a/b"], "exp_name"),
    "unknown dataset": (["dataset.name=imagenet"], "imagenet"),
    "missing MNIST files": (["dataset=mnist"], "revgn data fetch"),
    "augment on a non-CIFAR dataset": (["dataset.augment=crop"], "cifar"),
}


@pytest.mark.parametrize("name", list(TRAIN_CASES))
def test_train_rejects(name, existing, tmp_path):
    if name == "cuda without a GPU":
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
    before = snapshot(existing)
    bad, needle = TRAIN_CASES[name]
    extra = [f"dataset.root={tmp_path / 'empty data root'}"] if "MNIST" in name else []
    r = runner.invoke(app, ["--quiet", "train", *BASE, f"results_dir={existing}", *extra, *bad])
    assert_one_clear_error(r, contains=needle)
    assert snapshot(existing) == before


def test_results_dir_not_writable(tmp_path):
    blocker = tmp_path / "a file"
    blocker.write_text("not a directory")
    r = runner.invoke(app, ["--quiet", "train", *BASE, f"results_dir={blocker / 'results'}"])
    assert_one_clear_error(r, contains="not writable")


def test_paths_with_spaces_work(tmp_path):
    res = tmp_path / "my results dir" / "with spaces"
    r = runner.invoke(app, ["--quiet", "train", *BASE, f"results_dir={res}"])
    assert r.exit_code == 0, r.output
    assert list(res.glob("default/*/metrics.parquet"))


@pytest.mark.parametrize("bad,needle", [
    (["optimizer.lr=choice()"], "empty choice"),
    (["seed=range(5,5)"], "no values"),
    (["optimizer.lrr=1,2"], "lrr"),
    (["optimizer=gn,nope"], "nope"),
])
def test_sweep_rejects_before_running_anything(bad, needle, existing):
    before = snapshot(existing)
    r = runner.invoke(app, ["--quiet", "sweep", *BASE, f"results_dir={existing}", *bad])
    assert_one_clear_error(r, contains=needle)
    assert snapshot(existing) == before


def test_truncated_parquet_is_flagged_and_cleaned(tmp_path):
    res = tmp_path / "results"
    assert runner.invoke(app, ["--quiet", "train", *BASE, f"results_dir={res}"]).exit_code == 0
    pq = next(res.glob("default/*/metrics.parquet"))
    pq.write_bytes(pq.read_bytes()[:100])
    r = runner.invoke(app, ["runs", "--check", "--results", str(res)])
    assert r.exit_code == 1 and "unreadable" in r.output
    from revgn_cli.results import StoreError, load_runs

    with pytest.raises(StoreError):
        load_runs(res)
    # --clean deletes exactly the flagged run, and only after confirmation
    runner.invoke(app, ["runs", "--clean", "--results", str(res)], input="n\n")
    assert pq.exists()
    r = runner.invoke(app, ["runs", "--clean", "--yes", "--results", str(res)])
    assert r.exit_code == 0 and not pq.exists()
    assert runner.invoke(app, ["runs", "--check", "--results", str(res)]).exit_code == 0


def test_truncated_checkpoint_is_quarantined_and_the_run_trains_again(tmp_path):
    """A checkpoint that does not load makes the run corrupt: `train` moves its files, unchanged, to the quarantine
    (nothing resumes from them, nothing is deleted) and trains it anew."""
    res = tmp_path / "results"
    ov = [*BASE, f"results_dir={res}", "train.epochs=2"]
    assert runner.invoke(app, ["--quiet", "train", *ov]).exit_code == 0
    run = next(p for p in res.glob("default/*") if p.is_dir())
    ck = run / "checkpoints" / "last.pt"
    ck.write_bytes(ck.read_bytes()[:50])
    meta = run / "meta.json"
    meta.write_text(meta.read_text().replace('"done"', '"failed"'))
    before = snapshot(run)
    r = runner.invoke(app, ["--quiet", "train", *ov])
    assert r.exit_code == 0, r.output
    assert "was corrupt" in r.stderr and ".quarantine" in r.stderr
    moved = next(res.glob(f".quarantine/*/default/{run.name}"))
    assert snapshot(moved) == before  # byte for byte, every file
    assert "checkpoint last.pt does not load" in next(res.glob(".quarantine/*/REASONS.txt")).read_text()
    from revgn_cli.results.store import RunDir, run_state

    assert run_state(RunDir(run), checkpoints=True).state == "done"


def test_fetch_unknown_dataset():
    assert_one_clear_error(runner.invoke(app, ["--quiet", "data", "fetch", "imagenet"]), contains="imagenet")


def test_runs_bad_filter(existing):
    assert_one_clear_error(runner.invoke(app, ["runs", "--results", str(existing), "optimizer"]), contains="key=value")


def test_clean_keeps_what_it_cannot_attribute(tmp_path):
    """A run stored one level too high (what exp_name=. used to make), an unknown directory holding a checkpoint
    and an empty folder the store did not make are reported by --check and survive --clean -y; an empty run
    directory (a run id's name) is garbage and goes."""
    res = tmp_path / "results"
    assert runner.invoke(app, ["--quiet", "train", *BASE, f"results_dir={res}"]).exit_code == 0
    run = next(p for p in res.glob("default/*") if p.is_dir())
    misplaced = res / run.name
    import shutil

    shutil.copytree(run, misplaced)  # results/<run_id>/{meta.json, config.yaml, checkpoints/last.pt, ...}
    planted = res / "default" / "mystery"
    planted.mkdir()
    (planted / "weights.pt").write_bytes(b"not ours")
    empty = res / "default" / "empty-orphan"
    empty.mkdir()
    empty_run = res / "default" / "0123456789ab"
    empty_run.mkdir()
    before = snapshot(res)
    r = runner.invoke(app, ["runs", "--check", "--results", str(res)])
    assert r.exit_code == 1
    assert "mystery" in r.output and run.name in r.output and "kept" in r.output
    r = runner.invoke(app, ["runs", "--clean", "-y", "--results", str(res)])
    assert r.exit_code == 0, r.output
    assert empty.is_dir() and not empty_run.exists()
    assert snapshot(res) == before  # every file survived: the run's checkpoint, the planted one


def test_files_follow_the_umask(tmp_path):
    """Every file of a run lands with the mode open() gives under the process umask (022 → 0644), not mkstemp's
    0600, so a results directory shared by a group is readable to it."""
    import os
    import stat

    res = tmp_path / "results"
    old = os.umask(0o022)
    try:
        assert runner.invoke(app, ["--quiet", "train", *BASE, f"results_dir={res}"]).exit_code == 0
    finally:
        os.umask(old)
    run = next(p for p in res.glob("default/*") if p.is_dir())
    for rel in ("config.yaml", "meta.json", "metrics.parquet", "checkpoints/last.pt"):
        assert stat.S_IMODE((run / rel).stat().st_mode) == 0o644, rel


# --- errors that help (issue 13) --------------------------------------------------------------------------------


def test_diverged_run_records_why_and_a_rerun_says_so(tmp_path):
    import json

    from revgn_cli.errors import EXIT_DIVERGED

    res = tmp_path / "results"
    ov = [*BASE, f"results_dir={res}", "optimizer.lr=1e6", "train.diverge_factor=2", "train.epochs=3"]
    r = runner.invoke(app, ["--quiet", "train", *ov])
    assert r.exit_code == EXIT_DIVERGED == 3, r.output
    meta = json.loads(next(res.glob("default/*/meta.json")).read_text())
    assert meta["status"] == "diverged" and "diverge_factor" in meta["error"]
    r = runner.invoke(app, ["--quiet", "train", *ov])
    assert r.exit_code == EXIT_DIVERGED and "already diverged" in r.output and "diverge_factor" in r.stderr


def test_init_from_another_architecture_names_the_tensor(existing, tmp_path):
    ck = next(existing.glob("default/*/checkpoints/last.pt"))
    r = runner.invoke(app, ["--quiet", "train", *BASE, f"results_dir={tmp_path / 'r'}", "model.hidden=32",
                            f"train.init_from={ck}"])
    assert_one_clear_error(r, contains="shape")
    assert r.exit_code == 2 and "weight" in r.stderr and "64)" in r.stderr and "32)" in r.stderr


def test_init_from_a_non_checkpoint_is_one_line(existing, tmp_path):
    pq = next(existing.glob("default/*/metrics.parquet"))
    r = runner.invoke(app, ["--quiet", "train", *BASE, f"results_dir={tmp_path / 'r'}", f"train.init_from={pq}"])
    assert_one_clear_error(r, contains="not a revgn checkpoint")
    assert r.exit_code == 2 and r.stderr.count(str(pq)) == 1
    assert not (tmp_path / "r" / "default").exists()  # checked before any run dir is made


@pytest.mark.parametrize("bad,needle", [
    (["hydra/launcher=nosuch"], "no such launcher"),
    (["hydra/launcher=joblib", "hydra.launcher.n_jobs=0"], "n_jobs"),
])
@pytest.mark.parametrize("dry", [True, False])
def test_launcher_mistakes_caught_before_launch(bad, needle, dry, existing):
    before = snapshot(existing)
    r = runner.invoke(app, ["--quiet", "sweep", *(["--dry-run"] if dry else []), *BASE, "optimizer.lr=0.1,0.2",
                            f"results_dir={existing}", *bad])
    assert_one_clear_error(r, contains=needle)
    assert r.exit_code == 2 and snapshot(existing) == before


def test_reproduce_checks_data_once_up_front(tmp_path, monkeypatch):
    monkeypatch.setenv("REVGN_DATA", str(tmp_path / "no data here"))
    res = tmp_path / "results"
    r = runner.invoke(app, ["--quiet", "reproduce", "fig1", "scale=paper", "--results", str(res)])
    assert_one_clear_error(r, contains="revgn data fetch mnist")
    assert r.exit_code == 2 and not list(res.glob("*/*/meta.json"))  # no job started


def test_missing_runs_hint_keeps_results_and_overrides(tmp_path):
    res = tmp_path / "my results"
    r = runner.invoke(app, ["plot", "fig4", "model.hidden=32", "--results", str(res), "--out", str(tmp_path / "f")])
    assert_one_clear_error(r, contains="revgn reproduce fig4")
    assert "model.hidden=32" in r.stderr and f"--results '{res}'" in r.stderr


def test_verify_fig13_names_the_missing_runs(tmp_path):
    from test_figures import write_preset

    res = tmp_path / "results"
    write_preset(res, "minibatch_quick")  # GN/Adam baselines, but no GN + weight decay runs
    r = runner.invoke(app, ["verify", "fig13", "--results", str(res), "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "weight_decay" in (tmp_path / "claims.md").read_text()


# --- presets, output paths, exp_name ------------------------------------------------------------------------------

@pytest.mark.parametrize("cmd", [["train"], ["train", "--show-config"], ["sweep", "--dry-run"],
                                 ["reproduce", "fig1", "--dry-run"]])
@pytest.mark.parametrize("override,near", [("experiment=fig1_quik", "fig1_quick"), ("dataset=mnist5", "mnist5k"),
                                           ("model=tiniy", "tiny"), ("optimizer=adamm", "adam"),
                                           ("regime=minibatch", "mini_batch"), ("regularizer=nonee", "none")])
def test_unknown_group_option_names_the_close_ones(cmd, override, near, tmp_path):
    """Finding: `train experiment=nosuch` trained the default config and exited 0."""
    res = tmp_path / "results"
    r = runner.invoke(app, ["--quiet", *cmd, override, f"results_dir={res}"])
    assert_one_clear_error(r, contains=f"did you mean {near}")
    assert r.exit_code == 2 and not res.exists()


def test_verify_without_runs_exits_2_and_keeps_figures(tmp_path, monkeypatch):
    """Finding: `verify all --results /tmp/empty` replaced ./figures/claims.md with 20 MISSING and exited 0."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "claims.md").write_text("made from my real runs")
    (tmp_path / "empty").mkdir()
    for cmd in (["verify", "all"], ["plot", "all"]):
        r = runner.invoke(app, [*cmd, "--results", str(tmp_path / "empty")])
        assert_one_clear_error(r, contains="no runs")
        assert r.exit_code == 2
    assert (tmp_path / "figures" / "claims.md").read_text() == "made from my real runs"


def test_results_without_out_writes_beside_the_results(tmp_path, monkeypatch):
    from test_figures import write_preset

    monkeypatch.chdir(tmp_path)
    res = tmp_path / "other results"
    write_preset(res, "minibatch_quick")
    for cmd in (["verify", "fig2"], ["plot", "fig2"]):
        r = runner.invoke(app, [*cmd, "--results", str(res)])
        assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (res / "figures").iterdir()) == ["captions.md", "claims.md", "fig2.pdf", "fig2.png"]
    assert not (tmp_path / "figures").exists()


def test_out_paths_are_checked_up_front(existing, tmp_path):
    a_file = tmp_path / "taken"
    a_file.write_text("mine")
    r = runner.invoke(app, ["verify", "fig2", "--results", str(existing), "--out", str(a_file)])
    assert_one_clear_error(r, contains="is an existing file")
    assert r.exit_code == 2 and a_file.read_text() == "mine"
    r = runner.invoke(app, ["plot", "runs", "--results", str(existing), "--out", str(a_file / "sub")])
    assert_one_clear_error(r, contains="cannot write into")
    r = runner.invoke(app, ["plot", "fig2", "--results", str(existing), "--out", str(tmp_path / "x.svg")])
    assert_one_clear_error(r, contains="give a folder")


@pytest.mark.parametrize("ext", ["svg", "pdf", "png"])
def test_plot_runs_out_file_is_that_file_in_that_format(existing, tmp_path, ext):
    """Finding: `--out x.svg` made a folder named x.svg."""
    target = tmp_path / f"x.{ext}"
    r = runner.invoke(app, ["plot", "runs", "--results", str(existing), "--out", str(target)])
    assert r.exit_code == 0, r.output
    assert target.is_file()
    head = target.read_bytes()[:64]
    assert {"svg": b"<?xml", "pdf": b"%PDF", "png": b"\x89PNG"}[ext] in head


def test_plot_runs_into_an_unwritable_results_dir_is_one_line(existing, tmp_path):
    import os
    import shutil

    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    res = tmp_path / "ro"
    shutil.copytree(existing, res)
    res.chmod(0o555)
    try:
        r = runner.invoke(app, ["plot", "runs", "--results", str(res)])
        assert_one_clear_error(r, contains="--out")
    finally:
        res.chmod(0o755)


@pytest.mark.parametrize("value", ["café", "'café'", "x" * 300])
def test_exp_name_errors_are_one_line_with_a_fix_that_works(value, tmp_path):
    """Findings: `exp_name=café` said "quote it", and quoting then failed; 300 characters raised OSError."""
    res = tmp_path / "results"
    for cmd in (["train"], ["train", "--show-config"], ["sweep", "--dry-run"]):
        r = runner.invoke(app, ["--quiet", *cmd, *BASE, f"exp_name={value}", f"results_dir={res}"])
        assert_one_clear_error(r, contains="exp_name")
        assert r.exit_code == 2 and "quote" not in r.stderr and not res.exists()
