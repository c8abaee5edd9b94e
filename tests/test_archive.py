"""The run archive (revgn_cli/results/archive.py): finished runs' config, meta and rows copied to a folder to commit,
and back into a fresh results dir, where the runner skips them as finished and every reader sees the same rows."""
from __future__ import annotations

import pandas as pd

from revgn_cli.config import compose_config
from revgn_cli.results import RunDir
from revgn_cli.results.archive import ARCHIVE_FILES, archive_runs, restore_runs
from revgn_cli.train.runner import execute

TINY = ["dataset=digits", "model=tiny", "train.epochs=1", "metrics.every=0", "optimizer=sgd", "optimizer.lr=0.1",
        "device=cpu"]


def test_a_finished_run_travels_through_the_archive_and_is_not_trained_again(tmp_path):
    res, arc, fresh = tmp_path / "res", tmp_path / "arc", tmp_path / "fresh"
    out = execute(compose_config([*TINY, f"results_dir={res}"]))
    assert out.status == "done" and (out.path / "checkpoints").is_dir()
    # An unfinished run beside it (killed mid-training: meta says interrupted) is not archived.
    half = RunDir(res / out.path.parent.name / "0123456789ab")
    half.path.mkdir()
    for f in ("config.yaml", "metrics.parquet"):
        (half.path / f).write_bytes((out.path / f).read_bytes())
    half.write_meta(status="interrupted", run_id=half.run_id)

    kept = archive_runs(res, arc)
    assert [r.run_id for r in kept] == [out.path.name]
    dest = arc / out.path.parent.name / out.path.name
    assert sorted(p.name for p in dest.iterdir()) == sorted(ARCHIVE_FILES)  # no checkpoints
    assert archive_runs(res, arc) == []  # already there

    back = restore_runs(arc, fresh)
    assert [r.run_id for r in back] == [out.path.name]
    again = execute(compose_config([*TINY, f"results_dir={fresh}"]))
    assert again.status == "skipped" and again.prior == "done" and again.path == back[0].path
    pd.testing.assert_frame_equal(pd.read_parquet(again.path / "metrics.parquet"),
                                  pd.read_parquet(out.path / "metrics.parquet"))


def test_restore_never_overwrites_a_run_the_results_dir_holds(tmp_path):
    res, arc = tmp_path / "res", tmp_path / "arc"
    out = execute(compose_config([*TINY, f"results_dir={res}"]))
    archive_runs(res, arc)
    there = RunDir(out.path)
    there.write_meta(note="trained here")
    assert restore_runs(arc, res) == []
    assert there.read_meta()["note"] == "trained here"
    assert restore_runs(arc, tmp_path / "other", experiments={"not_this_one"}) == []
