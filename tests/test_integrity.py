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
