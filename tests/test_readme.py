"""Every `revgn` command line in README's code blocks parses: the command path exists and takes those options (Click parses them without running anything); what would train is
checked further without training — `train` overrides compose into a valid config, `sweep` and `reproduce` run
with `--dry-run` into an empty results dir. New README commands are picked up as they are added."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from revgn_cli.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[str]:
    text = README.read_text()
    cmds = []
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.splitlines():
            line = line.split("  #", 1)[0].strip()
            if line.startswith("revgn "):
                cmds.append(line)
    return cmds


def test_readme_has_commands():
    assert len(readme_commands()) >= 5


def run(args: list[str]):
    return CliRunner().invoke(app, ["--quiet", *args])


@pytest.mark.parametrize("line", readme_commands())
def test_readme_command_parses(line, tmp_path):
    args = shlex.split(line)[1:]
    while args and args[0].startswith("-"):  # global flags (--quiet, --debug) go before the command
        args = args[1:]
    # The command path exists and takes these options (Click rejects an unknown option before --help answers).
    r = run([*args, "--help"])
    assert r.exit_code == 0, f"`{line}`: {r.output}"
    res, out = tmp_path / "results", tmp_path / "out"
    overrides = [a for a in args[1:] if "=" in a and not a.startswith("-")]
    if args[0] == "train":
        from revgn_cli.config import compose_config

        compose_config(overrides)  # a typo, a wrong type or an unknown option fails here; nothing trains
    elif args[0] == "sweep":
        r = run(["sweep", "--dry-run", *args[1:], f"results_dir={res}"])
        assert r.exit_code == 0, f"`{line}` --dry-run: {r.output}"
    elif args[0] == "reproduce":
        r = run(["reproduce", "--dry-run", *args[1:], "--results", str(res), "--out", str(out)])
        assert r.exit_code == 0, f"`{line}` --dry-run: {r.output}"
    elif args[0] in ("runs", "plot", "verify") and "--clean" not in args:
        # Reads only: run it on an empty results dir; a figure without runs is one line naming the fix, and so is
        # a lookup of one's own runs (`runs show ID`, `plot runs FILTERS`) that finds none.
        res.mkdir(parents=True)  # an existing, empty dir: a results path that does not exist is an error (issue 14)
        extra = ["--results", str(res)] + (["--out", str(out)] if args[0] != "runs" else [])
        r = run([*args, *extra])
        own = args[:2] in (["runs", "show"], ["plot", "runs"]) and "`revgn runs" in r.stderr
        assert r.exit_code == 0 or (r.exit_code == 2 and ("revgn reproduce" in r.stderr or own)), \
            f"`{line}`: {r.output}"
    assert not list(res.glob("*/*/meta.json"))  # nothing trained
