"""The repo stays clean: what `make demo`, `revgn reproduce`, `plot` and `verify` write by default (figures/,
results/) is ignored by git, and the committed reference figures live apart, in docs/figures/."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from revgn_cli.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


pytestmark = pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(),
                                reason="needs git and a checkout")


def test_default_outputs_are_ignored_and_not_tracked():
    from revgn_cli.figures import commands as fig_cmds
    from revgn_cli.studies import commands as study_cmds

    assert fig_cmds.DEFAULT_OUT == study_cmds.DEFAULT_OUT == Path("figures")
    assert _git("ls-files", "figures") == ""  # nothing committed where commands write
    outputs = ["figures/fig1.png", "figures/fig1.pdf", "figures/claims.md", "figures/captions.md",
               "results/default/abc/meta.json"]
    ignored = _git("check-ignore", *outputs).split()
    assert sorted(ignored) == sorted(outputs)
    assert (ROOT / "docs" / "figures" / "claims.md").exists()  # the reference set


def test_reproduce_plot_verify_leave_a_checkout_clean(tmp_path, monkeypatch):
    """The demo's flow with its default paths (results/, figures/), in a copy of the tracked tree: afterwards
    `git status --porcelain` is empty. Jobs run in-process on a tiny model (the multirun is tested elsewhere)."""
    repo = tmp_path / "checkout"
    for rel in _git("ls-files").splitlines():
        if (ROOT / rel).is_file():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, repo / rel)
    _git("init", "-q", cwd=repo)
    _git("add", "-A", cwd=repo)
    _git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tracked tree", cwd=repo)

    from revgn_cli import sweep
    from revgn_cli.train.runner import execute

    def in_process_launch(overrides, force=False, quiet=False):
        return [{"status": execute(j.cfg).status, "overrides": j.overrides} for j in sweep.expand(overrides)]

    monkeypatch.setattr(sweep, "launch", in_process_launch)
    monkeypatch.chdir(repo)
    tiny = ["dataset=digits", "model=tiny", "regime.n_samples=128", "train.epochs=2", "metrics.every=0", "device=cpu"]
    for cmd in (["reproduce", "fig1", "scale=quick"], ["plot", "fig1"], ["verify", "fig1"]):
        r = runner.invoke(app, ["--quiet", *cmd, *tiny])
        assert r.exit_code == 0, r.output
    assert (repo / "figures" / "fig1.png").exists() and (repo / "figures" / "claims.md").exists()
    assert _git("status", "--porcelain", cwd=repo) == ""
