"""A researcher's own runs: ``revgn plot runs``, ``revgn compare``, the runs table (auto columns, --columns,
--sort, --format, runs show), filter errors, fast start, friendly override errors (issue 14)."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from revgn_cli import cli
from revgn_cli.cli import app
from revgn_cli.config import compose_config, flatten, run_id
from revgn_cli.figures.style import visible_lines
from revgn_cli.results import RunDir, load_runs, run_summaries
from revgn_cli.results.query import QueryError

from conftest import TINY

runner = CliRunner()
# Two tiny SGD runs that differ in exactly two config keys: the learning rate and the seed.
CMP = TINY + ["exp_name=cmp", "optimizer=sgd", "metrics.every=0", "metrics.loss_change=false"]
DIFF = {"lr": ("optimizer.lr=0.1", "optimizer.lr=0.05"), "seed": ("seed=1", "seed=2")}


def invoke(*args: str):
    return runner.invoke(app, ["--quiet", *args])


def one_error(result, contains: str) -> str:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert contains.lower() in lines[0].lower(), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def cmp_results(tmp_path_factory):
    """results/cmp/ with two finished runs (lr 0.1 seed 1, lr 0.05 seed 2); trained once for the module."""
    res = tmp_path_factory.mktemp("own") / "results"
    for i in range(2):
        r = invoke("train", *CMP, DIFF["lr"][i], DIFF["seed"][i], "--results", str(res))
        assert r.exit_code == 0, r.output
    return res


def summaries(res: Path) -> dict[float, dict]:
    return {s["optimizer.lr"]: s for s in run_summaries(res)}


# --- plot runs ---------------------------------------------------------------------------------------------------

def test_plot_runs_draws_each_run_as_its_series(cmp_results, tmp_path):
    out = tmp_path / "mine" / "cmp.png"
    r = invoke("plot", "runs", "exp_name=cmp", "--results", str(cmp_results), "--y", "train_loss,test_loss",
               "--hue", "optimizer.lr", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert out.exists() and out.with_suffix(".pdf").exists()

    from revgn_cli.figures.user import plot_runs

    df = load_runs(cmp_results, {"exp_name": "cmp"}, statuses=("done", "diverged"))
    fig = plot_runs(df, ys=["train_loss", "test_loss"], hue="optimizer.lr")
    axes = fig.axes
    assert len(axes) == 2
    assert axes[0].get_yscale() == "log" and axes[1].get_yscale() == "linear"  # log where the metric asks
    assert axes[0].get_ylabel().startswith("train loss") and axes[0].get_xlabel() == "epoch"
    for ax, metric in zip(axes, ("train_loss", "test_loss")):
        lines = {ln.get_label(): ln for ln in visible_lines(ax)}
        assert set(lines) == {"lr=0.05", "lr=0.1"}
        for lr, s in summaries(cmp_results).items():
            rows = pd.read_parquet(Path(s["path"]) / "metrics.parquet")
            ep = rows[rows.split == "epoch"]
            xs, ys = lines[f"lr={lr:g}"].get_data()
            assert list(xs) == list(ep.epoch) == [0.0, 1.0, 2.0]
            assert list(ys) == pytest.approx(list(ep[metric]))


def test_plot_runs_default_out_is_under_results_not_figures(cmp_results, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = invoke("plot", "runs", "exp_name=cmp", "--results", str(cmp_results), "--hue", "optimizer.lr")
    assert r.exit_code == 0, r.output
    made = sorted(p.suffix for p in (cmp_results / "plots").iterdir())
    assert made == [".pdf", ".png"] and not (tmp_path / "figures").exists()


def test_plot_runs_mean_band_over_seeds(cmp_results):
    """Both runs in one series (hue on a key they share): the line is their mean, with a band."""
    from revgn_cli.figures.user import plot_runs

    df = load_runs(cmp_results, {"exp_name": "cmp"})
    fig = plot_runs(df, ys=["test_loss"], hue="optimizer.name")
    ax = fig.axes[0]
    (line,) = visible_lines(ax)
    assert line.get_label() == "SGD"
    ep = df[df.split == "epoch"]
    assert list(line.get_ydata()) == pytest.approx(list(ep.groupby("epoch").test_loss.mean()))
    assert len(ax.collections) == 1  # the ±1 std band


def test_plot_runs_bad_key_and_figN_still_work(cmp_results):
    one_error(invoke("plot", "runs", "--results", str(cmp_results), "--hue", "optimiser.lr"),
              "did you mean optimizer.lr")
    one_error(invoke("plot", "runs", "--results", str(cmp_results), "--y", "test_los"), "did you mean test_loss")
    one_error(invoke("plot", "fig2", "--results", str(cmp_results)), "revgn reproduce fig2")


# --- compare -----------------------------------------------------------------------------------------------------

def test_compare_shows_exactly_the_differing_keys(cmp_results):
    s = summaries(cmp_results)
    r = invoke("compare", s[0.1]["run_id"][:8], s[0.05]["run_id"], "--results", str(cmp_results))
    assert r.exit_code == 0, r.output
    first_words = {ln.split()[0] for ln in r.output.splitlines() if ln.strip()}
    cfg_keys = set(flatten(yaml.safe_load((Path(s[0.1]["path"]) / "config.yaml").read_text())))
    assert cfg_keys & first_words == {"optimizer.lr", "seed"}
    for metric in ("test", "train"):
        assert any(ln.startswith(f"{metric} loss") for ln in r.output.splitlines())
    one_error(invoke("compare", s[0.1]["run_id"], "--results", str(cmp_results)), "two or more")
    one_error(invoke("compare", s[0.1]["run_id"], "ffffffff", "--results", str(cmp_results)), "no run 'ffffffff'")


# --- the runs table ----------------------------------------------------------------------------------------------

def test_runs_table_shows_the_keys_that_differ(cmp_results, monkeypatch):
    buf = io.StringIO()
    monkeypatch.setattr(cli, "out", Console(file=buf, width=80))
    r = runner.invoke(app, ["runs", "--results", str(cmp_results)])
    assert r.exit_code == 0, r.output
    text = buf.getvalue()
    header = next(ln for ln in text.splitlines() if ln.startswith("run id"))
    assert header.split()[:6] == ["run", "id", "status", "epochs", "seed", "lr"]
    assert max(len(ln.rstrip()) for ln in text.splitlines()) <= 80
    for s in run_summaries(cmp_results):
        line = next(ln for ln in text.splitlines() if ln.startswith(s["run_id"][:8]))
        assert line.split()[1:5] == ["done", "2", str(s["seed"]), f"{s['optimizer.lr']:g}"]


def test_runs_csv_round_trips_through_pandas(cmp_results):
    r = invoke("runs", "--results", str(cmp_results), "--format", "csv")
    assert r.exit_code == 0, r.output
    df = pd.read_csv(io.StringIO(r.stdout))
    assert set(df.run_id) == {s["run_id"] for s in run_summaries(cmp_results)}  # full ids
    for row in df.itertuples():
        meta = json.loads((cmp_results / "cmp" / row.run_id / "meta.json").read_text())
        assert row.test_loss == meta["final"]["test_loss"] and row.train_acc == meta["final"]["train_acc"]
    assert df["optimizer.lr"].dtype.kind == "f" and set(df.seed) == {1, 2} and set(df.status) == {"done"}
    js = json.loads(invoke("runs", "--results", str(cmp_results), "--format", "json").stdout)
    assert [j["run_id"] for j in js] == list(df.run_id) and js[0]["optimizer.lr"] == df["optimizer.lr"][0]


def test_runs_sort_and_columns(cmp_results):
    def csv(*opts):
        r = invoke("runs", "--results", str(cmp_results), "--format", "csv", *opts)
        assert r.exit_code == 0, r.output
        return pd.read_csv(io.StringIO(r.stdout))

    assert list(csv("--sort", "optimizer.lr")["optimizer.lr"]) == [0.05, 0.1]
    assert list(csv("--sort", "optimizer.lr:desc")["optimizer.lr"]) == [0.1, 0.05]
    by_loss = csv("--sort", "test_loss:desc")
    assert list(by_loss.test_loss) == sorted(by_loss.test_loss, reverse=True)
    assert list(csv("--columns", "seed,test_acc").columns) == ["run_id", "seed", "test_acc"]  # csv keeps run_id
    r = invoke("runs", "--results", str(cmp_results), "--columns", "seed,test_acc")
    assert r.exit_code == 0, r.output
    assert next(ln for ln in r.output.splitlines() if ln.startswith("run id")).split() == ["run", "id", "seed",
                                                                                          "test", "acc"]
    one_error(invoke("runs", "--results", str(cmp_results), "--sort", "test_ac"), "did you mean test_acc")
    one_error(invoke("runs", "--results", str(cmp_results), "--sort", "test_acc:down"), "asc or desc")
    one_error(invoke("runs", "--results", str(cmp_results), "--columns", "sed"), "did you mean seed")
    one_error(invoke("runs", "--results", str(cmp_results), "--format", "xml"), "table, csv, json")


def test_runs_show(cmp_results):
    s = summaries(cmp_results)[0.1]
    r = invoke("runs", "show", s["run_id"][:6], "--results", str(cmp_results))
    assert r.exit_code == 0, r.output
    for text in (s["run_id"], "done", f"{s['path']}/metrics.parquet", "resolved config", "lr: 0.1", "test loss"):
        assert text in r.output, text
    one_error(invoke("runs", "show", "zzz", "--results", str(cmp_results)), "no run 'zzz'")


def test_unfinished_runs_show_last_logged_metrics_and_any_status(cmp_results, tmp_path):
    res = tmp_path / "results"
    src = Path(summaries(cmp_results)[0.1]["path"])
    for name, status in (("aaaaaaaaaaaa", "interrupted"), ("bbbbbbbbbbbb", "corrupt")):
        dst = res / "cmp" / name
        shutil.copytree(src, dst)
        meta = json.loads((dst / "meta.json").read_text())
        for k in ("final", "epochs_done", "steps_done", "finished"):
            meta.pop(k, None)
        (dst / "meta.json").write_text(json.dumps({**meta, "status": status}))
    ep = RunDir(src).read_rows().query("split == 'epoch'")
    df = pd.read_csv(io.StringIO(invoke("runs", "--results", str(res), "--format", "csv").stdout))
    row = df[df.run_id == "aaaaaaaaaaaa"].iloc[0]
    assert row.status == "interrupted" and row.epochs == 2
    assert row.test_loss == pytest.approx(ep.test_loss.iloc[-1])
    r = invoke("runs", "--results", str(res))
    assert "interrupted" in r.stdout and "corrupt" in r.stdout and "—" not in r.stdout
    assert "meta.json has no valid status ('corrupt')" in r.stderr  # the why, under the table


# --- filter errors -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,contains", [
    (["optimiser.name=sgd"], "did you mean optimizer.name?"),
    (["nosuch.key=1"], "unknown filter key 'nosuch.key'"),
    (["optimizer.lr=abc"], "optimizer.lr is numeric"),
    (["metrics.ntk=maybe"], "true/false"),
])
def test_filter_errors_are_one_line_and_load_runs_raises_them(cmp_results, args, contains):
    one_error(invoke("runs", "--results", str(cmp_results), *args), contains)
    k, v = args[0].split("=")
    with pytest.raises(QueryError, match=contains.replace("?", r"\?")):
        load_runs(cmp_results, {k: v})


def test_results_path_missing_or_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    for args, contains in ((["runs", "--results", str(tmp_path / "nope")], "does not exist"),
                           (["runs", "--check", "--results", str(tmp_path / "nope")], "does not exist"),
                           (["runs", "--results", str(f)], "is a file"),
                           (["compare", "a", "b", "--results", str(tmp_path / "nope")], "does not exist")):
        one_error(invoke(*args), contains)
    with pytest.raises(QueryError, match="does not exist"):
        load_runs(tmp_path / "nope")


# --- fast start and the command-line surface ---------------------------------------------------------------------

def test_importing_the_cli_pulls_in_no_heavy_module():
    code = ("import sys, revgn_cli.cli; "
            "print(','.join(m for m in ('matplotlib', 'torch', 'pandas', 'hydra') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"`import revgn_cli.cli` imported {out.stdout.strip()}"


@pytest.mark.parametrize("args,contains", [
    (["--foo"], "unknown option '--foo'"),
    (["-q"], "put it before the command"),
    (["dataset=digits", "--debug"], "revgn --debug train"),
    (["--cfg", "job"], "revgn train --show-config"),
    (["optimizer.lr=0.1,0.2"], "revgn sweep optimizer.lr=0.1,0.2"),
    (["train.epochs=1,"], "drop it (train.epochs=1)"),
    (["exp_name=café"], "a folder name of ascii letters"),  # not "quote it": quoted, it is still no folder name
    (["dataset.root=/tmp/café"], "dataset.root='/tmp/café'"),  # where quoting works, the hint says how
    (["optimizer"], "not key=value"),
])
def test_train_parse_errors_name_the_override_and_the_fix(args, contains, results):
    one_error(invoke("train", *args, "--results", str(results)), contains)
    assert not results.exists()


def test_show_config_prints_the_resolved_config_and_trains_nothing(results):
    r = invoke("train", "--show-config", "dataset=digits", "optimizer.lr=0.3", "--results", str(results))
    assert r.exit_code == 0, r.output
    cfg = yaml.safe_load(r.stdout)
    assert cfg["dataset"]["name"] == "digits" and cfg["optimizer"]["lr"] == 0.3 and cfg["results_dir"] == str(results)
    assert run_id(compose_config(["dataset=digits", "optimizer.lr=0.3"])) in r.stdout and not results.exists()


def test_help_version_and_results_everywhere():
    r = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "<bool>" not in r.output
    from revgn_cli.optim import OPTIMIZERS  # every registered optimiser is listed, in the group's line

    assert "optimizer=" + " | ".join(sorted(OPTIMIZERS)) in r.output
    assert "minibatch_quick" in r.output and "--show-config" in r.output
    assert runner.invoke(app, ["--version"]).output.startswith("revgn ")
    for cmd in (["train"], ["sweep"], ["runs"], ["compare"], ["plot"], ["reproduce"], ["verify"], ["study", "run"],
                ["study", "spawn"]):
        assert "--results" in runner.invoke(app, [*cmd, "--help"], env={"COLUMNS": "200"}).output, cmd


def test_results_flag_and_results_dir_are_the_same(results):
    r = invoke("train", "--show-config", f"results_dir={results}", "--results", str(results / "other"))
    one_error(r, "results dir given twice")


def test_dataset_root_is_not_part_of_the_run_id():
    assert run_id(compose_config(["dataset.root=/somewhere/else"])) == run_id(compose_config([]))


# --- progress ------------------------------------------------------------------------------------------------------

def test_job_lines_follow_each_running_job():
    from rich.progress import Progress

    from revgn_cli.progress import JobLines, LineReporter, job_columns

    buf = io.StringIO()
    rep = LineReporter("abcdef123456", every_s=0.0, stream=buf)
    rep.start(10, 0, "sgd")
    rep.advance(4, 0.4, 1.25)
    progress = Progress(*job_columns(), disable=True)
    jobs = JobLines(progress)
    for line in buf.getvalue().splitlines():
        assert jobs.feed(line)
    (task,) = [t for t in progress.tasks]
    assert task.completed == 4 and task.total == 10 and "loss 1.25" in task.fields["info"]
    assert "abcdef12" in task.description
    assert not jobs.feed("[revgn sweep] done abcdef123456 optimizer.lr=0.1")
    assert progress.tasks == []


def test_expand_reports_each_composed_job():
    from revgn_cli.sweep import expand

    seen = []
    jobs = expand(["dataset=digits", "optimizer.lr=0.1,0.2,0.3"], on_job=lambda d, n: seen.append((d, n)))
    assert len(jobs) == 3 and seen == [(1, 3), (2, 3), (3, 3)]


def test_grid_composition_matches_hydra_job_by_job():
    """The fast grid path (compose per group choice, then Hydra's own value-override step) gives exactly the
    configs — hence run ids — that composing every job through Hydra gives."""
    from revgn_cli.sweep import expand

    grid = ["dataset=digits", "optimizer=sgd,adam", "optimizer.lr=0.1,0.01", "seed=1,2"]
    jobs = expand(grid)
    assert len(jobs) == 8
    assert [j.cfg for j in jobs] == [compose_config(j.overrides) for j in jobs]
    with pytest.raises(Exception, match="optimizer.lr"):
        expand(["optimizer.lr=0.1,abc"])


@pytest.mark.parametrize("path,value", [
    (("model", "n_blocks"), "x"), (("model", "nope"), 1), (("seed",), None), (("seed",), 1.5), (("device",), 3),
    (("model", "init_std"), 1), (("model", "hidden"), None), (("train", "keep_checkpoints"), [1, "a"]),
    (("extra",), {"lr": 0.1}), (("optimizer",), 3), (("model", "first_block_linear"), 1),
])
def test_schema_precheck_is_never_looser_than_omegaconf(path, value):
    """`revgn runs` checks stored configs with a quick pre-check; whatever it accepts must merge into the schema."""
    import copy

    from omegaconf import OmegaConf

    from revgn_cli.config import Config, config_dict
    from revgn_cli.results.fastcheck import fits_schema

    cfg = config_dict(compose_config([]))
    assert fits_schema(cfg)
    bad = copy.deepcopy(cfg)
    node = bad
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    if fits_schema(bad):
        OmegaConf.merge(OmegaConf.structured(Config), bad)  # raises if the pre-check was too loose


# --- runs: filters that match nothing, 80 columns, fast error paths -------------------------------------------------

@pytest.mark.parametrize("flt,names", [(["exp_name=nosuch"], "exp_name has: cmp"),
                                       (["optimizer.lr=0.3"], "optimizer.lr has: 0.05, 0.1"),
                                       (["optimizer.lr=0.1", "seed=2"], "each matches some")])
def test_runs_filter_matching_nothing_exits_2_naming_what_exists(cmp_results, flt, names):
    """Finding: `revgn runs exp_name=nosuch` printed an empty table and exited 0."""
    one_error(invoke("runs", *flt, "--results", str(cmp_results)), names)


def test_runs_at_80_columns_tells_gn_from_adam(tmp_path, monkeypatch):
    """Finding: on a mixed results dir the table kept experiment and seed but dropped optimizer and lr."""
    from test_figures import write_preset

    res = tmp_path / "results"
    for preset in ("fig1_quick", "minibatch_quick"):
        write_preset(res, preset)
    buf = io.StringIO()
    monkeypatch.setattr(cli, "out", Console(file=buf, width=80))
    r = runner.invoke(app, ["runs", "--results", str(res)])
    assert r.exit_code == 0, r.output
    text = buf.getvalue()
    assert max(len(ln.rstrip()) for ln in text.splitlines()) <= 80
    head = " ".join(text.split("─")[0].splitlines()[-3:])  # the (wrapped) header above the rule
    assert "optimizer" in head and "lr" in head.split()
    caption = " ".join(text.split("also differing:")[1].split())
    assert "seed" in caption and "experiment" in caption  # what was dropped is named
    summ = {s["run_id"][:8]: s for s in run_summaries(res)}
    for ln in text.splitlines():
        if ln[:8] in summ:
            assert ln.split()[3] == summ[ln[:8]]["optimizer.name"]


def test_runs_error_paths_import_no_torch(cmp_results):
    """Finding: error paths took 3× as long as the listing (the error handler imported torch)."""
    code = ("import sys; from typer.testing import CliRunner; from revgn_cli.cli import app; "
            f"r = CliRunner().invoke(app, ['runs', '--results', {str(cmp_results)!r}, *sys.argv[1:]]); "
            "print(r.exit_code, 'torch' in sys.modules)")
    for args in (["--sort", "nosuchkey"], ["exp_name=nosuch"], ["optimiser.name=gn"]):
        r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
        assert r.stdout.split() == ["2", "False"], (args, r.stdout, r.stderr)
