"""No silent partial results: a run that is present but unreadable is a `corrupt` row in `revgn runs` (never
hidden, never failing the whole table), stops `plot`/`verify` with one line naming it unless --allow-partial (then
the figure title and the claims table say what is missing), and a finished run whose rows are gone counts as not
done, so sweeps train it again."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from revgn_cli.cli import app
from revgn_cli.results import load_runs, run_summaries
from revgn_cli.results.loader import CorruptRunError
from test_figures import write_preset
from test_hostile import BASE, assert_one_clear_error

runner = CliRunner()


@pytest.fixture
def fig2(tmp_path) -> tuple[Path, list[Path]]:
    """fig2's quick runs (synthetic, finished), sorted by run id."""
    res = tmp_path / "results"
    write_preset(res, "minibatch_quick")
    return res, sorted(p for p in (res / "minibatch_quick").iterdir() if p.is_dir())


def _gn_run(runs: list[Path]) -> Path:
    return next(p for p in runs if yaml.safe_load((p / "config.yaml").read_text())["optimizer"]["name"] == "gn")


def test_invalid_yaml_is_a_corrupt_row_and_stops_plot_and_verify(fig2, tmp_path):
    res, runs = fig2
    bad = _gn_run(runs)
    (bad / "config.yaml").write_text("optimizer: [unclosed\n")
    r = runner.invoke(app, ["runs", "--results", str(res)])
    assert r.exit_code == 0, r.output
    assert f"{len(runs)} run(s)" in r.output and "corrupt" in r.output and bad.name in r.stderr
    for cmd in (["plot", "fig2"], ["verify", "fig2"]):
        r = runner.invoke(app, [*cmd, "--results", str(res), "--out", str(tmp_path / "out")])
        assert_one_clear_error(r, contains=bad.name)
        assert r.exit_code == 2 and "revgn runs --check" in r.stderr
    assert not (tmp_path / "out" / "fig2.png").exists()


def test_allow_partial_names_the_missing_seed(fig2, tmp_path):
    res, runs = fig2
    bad = _gn_run(runs)
    seed = yaml.safe_load((bad / "config.yaml").read_text())["seed"]
    (bad / "metrics.parquet").write_bytes(b"PAR1 truncated")
    out = tmp_path / "out"
    r = runner.invoke(app, ["plot", "fig2", "--allow-partial", "--results", str(res), "--out", str(out)])
    assert r.exit_code == 0, r.output
    from revgn_cli.figures import render

    fig = render("fig2", res, None, allow_partial=True).figure
    title = fig._suptitle.get_text()
    assert "PARTIAL" in title and f"seed={seed}" in title and "optimizer=gn" in title
    r = runner.invoke(app, ["verify", "fig2", "--allow-partial", "--results", str(res), "--out", str(out)])
    assert r.exit_code == 0, r.output
    claims = (out / "claims.md").read_text()
    assert "partial" in claims and f"seed={seed}" in claims


def test_bad_typed_config_names_the_run(fig2):
    res, runs = fig2
    bad = runs[0]
    cfg = yaml.safe_load((bad / "config.yaml").read_text())
    cfg["optimizer"]["lr"] = "fast"
    (bad / "config.yaml").write_text(yaml.safe_dump(cfg))
    r = runner.invoke(app, ["runs", "--results", str(res)])
    assert r.exit_code == 0, r.output
    assert "corrupt" in r.output and bad.name in r.stderr and "lr" in r.stderr
    rows = {x["run_id"]: x for x in run_summaries(res, include_broken=True)}
    assert rows[bad.name]["status"] == "corrupt" and len(rows) == len(runs)
    with pytest.raises(CorruptRunError, match=bad.name):
        load_runs(res)
    assert bad.name not in set(load_runs(res, allow_partial=True)["run_id"])


def test_done_without_rows_is_not_done(tmp_path):
    res = tmp_path / "results"
    ov = [*BASE, f"results_dir={res}"]
    assert runner.invoke(app, ["--quiet", "train", *ov]).exit_code == 0
    pq = next(res.glob("default/*/metrics.parquet"))
    pq.unlink()
    r = runner.invoke(app, ["runs", "--results", str(res)])
    assert r.exit_code == 0 and "corrupt" in r.output
    r = runner.invoke(app, ["sweep", "--dry-run", *ov])
    assert r.exit_code == 0 and "corrupt" in r.output  # not "done": the sweep would train it
    r = runner.invoke(app, ["--quiet", "train", *ov])  # trains it again instead of "already finished"
    assert r.exit_code == 0 and "skipped" not in r.output, r.output
    assert pq.exists() and run_summaries(res)[0]["status"] == "done"


# --- one state for every command; --clean that cannot destroy data ------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One finished two-epoch run (trained once for the module; tests copy it)."""
    res = tmp_path_factory.mktemp("integrity") / "results"
    r = runner.invoke(app, ["--quiet", "train", *BASE, "train.epochs=2", f"results_dir={res}"])
    assert r.exit_code == 0, r.output
    return res


def _copy(trained: Path, tmp_path: Path) -> tuple[Path, Path]:
    import shutil

    res = tmp_path / "results"
    shutil.copytree(trained, res)
    return res, next(p for p in (res / "default").iterdir() if p.is_dir())


def _cut_rows(run: Path) -> None:
    import pandas as pd

    rows = pd.read_parquet(run / "metrics.parquet")
    rows[rows["epoch"] <= 1].to_parquet(run / "metrics.parquet", index=False)


DAMAGE = {  # finding: --clean deleted the whole run for each of these
    "missing config.yaml": (lambda run: (run / "config.yaml").unlink(), "config.yaml"),
    "unreadable meta.json": (lambda run: (run / "meta.json").write_text("{not json"), "meta.json"),
    "rows cut short": (_cut_rows, "rows end at epoch 1 of 2"),
    "truncated checkpoint": (lambda run: (run / "checkpoints" / "last.pt").write_bytes(
        (run / "checkpoints" / "last.pt").read_bytes()[:64]), "does not load"),
}


def _files(root: Path) -> dict[str, str]:
    from test_hostile import snapshot

    return snapshot(root)


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_clean_quarantines_a_damaged_run_whole_and_leaves_user_folders(damage, trained, tmp_path):
    res, run = _copy(trained, tmp_path)
    hurt, reason = DAMAGE[damage]
    hurt(run)
    (res / "my_analysis" / "sub").mkdir(parents=True)
    (res / "my_analysis" / "sub" / "notes.txt").write_text("mine")
    (res / "my_analysis" / "empty").mkdir()
    (res / "plots" / "lr_study").mkdir(parents=True)
    (res / "plots" / "lr_study" / "curve.png").write_bytes(b"\x89PNG mine")
    data, mine = _files(run), {k: v for k, v in _files(res).items() if k.startswith(("my_analysis", "plots"))}
    # Every command sees the same state: `runs` lists it corrupt with the reason, --check flags it.
    r = runner.invoke(app, ["runs", "--results", str(res)])
    assert r.exit_code == 0 and "corrupt" in r.output and reason in r.stderr, r.output
    r = runner.invoke(app, ["runs", "--check", "--results", str(res)])
    assert r.exit_code == 1 and reason in r.output and "quarantines" in r.output
    r = runner.invoke(app, ["runs", "--clean", "--yes", "--results", str(res)])
    assert r.exit_code == 0, r.output
    assert not run.exists() and ".quarantine" in r.output and "mv " in r.output
    moved = next(res.glob(f".quarantine/*/default/{run.name}"))
    assert _files(moved) == data  # every data file, byte for byte
    assert reason in next(res.glob(".quarantine/*/REASONS.txt")).read_text()
    assert {k: v for k, v in _files(res).items() if k.startswith(("my_analysis", "plots"))} == mine
    assert (res / "my_analysis" / "empty").is_dir()
    # Restoring is moving it back: the run is there again, as damaged as before.
    moved.rename(run)
    assert _files(run) == data
    assert runner.invoke(app, ["runs", "--check", "--results", str(res)]).exit_code == 1


def test_clean_deletes_only_temporary_files_and_empty_run_dirs(trained, tmp_path):
    res, run = _copy(trained, tmp_path)
    tmp = run / ".metrics.parquet.x1y2.tmp"
    tmp.write_bytes(b"half")
    empty_run = res / "default" / "abcdef012345"
    empty_run.mkdir()
    stranger = res / "default" / "abcdef012346"  # a run id's name, but a file the store never writes
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    before = _files(res)
    r = runner.invoke(app, ["runs", "--clean", "--yes", "--results", str(res)])
    assert r.exit_code == 0, r.output
    assert not tmp.exists() and not empty_run.exists() and not (res / ".quarantine").exists()
    assert _files(res) == {k: v for k, v in before.items() if not k.endswith(".tmp")}


@pytest.mark.parametrize("damage", ["missing config.yaml", "unreadable meta.json", "rows cut short"])
def test_train_quarantines_a_corrupt_run_then_trains_it(damage, trained, tmp_path):
    """Finding: a corrupt config made `train` say "already done, skipped", a corrupt meta.json failed the job."""
    res, run = _copy(trained, tmp_path)
    DAMAGE[damage][0](run)
    data = _files(run)
    r = runner.invoke(app, ["--quiet", "train", *BASE, "train.epochs=2", f"results_dir={res}"])
    assert r.exit_code == 0 and "skipped" not in r.output, r.output
    assert "was corrupt" in r.stderr
    assert _files(next(res.glob(f".quarantine/*/default/{run.name}"))) == data
    assert run_summaries(res)[0]["status"] == "done"


def test_sweep_retrains_a_run_whose_meta_is_corrupt(trained, tmp_path):
    res, run = _copy(trained, tmp_path)
    (run / "meta.json").write_text("{not json")
    r = runner.invoke(app, ["--quiet", "sweep", *BASE, "train.epochs=2", f"results_dir={res}"])
    assert r.exit_code == 0, r.output
    assert list(res.glob(f".quarantine/*/default/{run.name}/meta.json"))
    assert run_summaries(res)[0]["status"] == "done"


def test_rows_cut_short_stop_plot_unless_allow_partial(trained, tmp_path):
    res, run = _copy(trained, tmp_path)
    _cut_rows(run)
    r = runner.invoke(app, ["plot", "runs", "--results", str(res), "--out", str(tmp_path / "p.png")])
    assert_one_clear_error(r, contains=run.name)
    assert "rows end at epoch 1 of 2" in r.stderr and "--allow-partial" in r.stderr
    with pytest.raises(CorruptRunError):
        load_runs(res)
    assert load_runs(res, allow_partial=True).attrs["partial"]


def test_killed_run_is_stale_and_a_live_one_running(trained, tmp_path):
    """kill -9 leaves meta.json saying running: no process holds the lock, so every command says stale."""
    import json

    from revgn_cli.results.store import RunDir, run_state

    res, run = _copy(trained, tmp_path)
    meta = json.loads((run / "meta.json").read_text())
    (run / "meta.json").write_text(json.dumps({**meta, "status": "running", "pid": 999999999}))
    assert run_state(RunDir(run)).state == "stale"

    def listed_status() -> str:
        r = runner.invoke(app, ["runs", "--results", str(res)])
        assert r.exit_code == 0, r.output
        return next(ln for ln in r.output.splitlines() if ln.startswith(run.name[:8])).split()[1]

    assert listed_status() == "stale"
    r = runner.invoke(app, ["runs", "--check", "--results", str(res)])
    assert r.exit_code == 1 and "stale" in r.output and "999999999" in r.output
    before = _files(res)
    assert runner.invoke(app, ["runs", "--clean", "--yes", "--results", str(res)]).exit_code == 0
    assert _files(res) == before  # resumable: kept
    with RunDir(run).lock():
        assert listed_status() == "running"


def test_ctrl_c_outside_the_loop_claims_no_checkpoint(monkeypatch):
    """Finding: Ctrl-C during set-up printed "checkpoint saved" when none existed."""
    import io

    import typer
    from rich.console import Console

    from revgn_cli import cli

    buf = io.StringIO()
    monkeypatch.setattr(cli, "err", Console(file=buf, width=200))

    @cli.guarded
    def setup() -> None:
        raise KeyboardInterrupt

    with pytest.raises(typer.Exit) as e:
        setup()
    assert e.value.exit_code == 130
    assert "interrupted" in buf.getvalue() and "checkpoint saved" not in buf.getvalue()
