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


# ------------------------------------------------------------------------------------------- the docs as documents

ROOT = README.parent
DOCS = sorted((ROOT / "docs").rglob("*.md"))
MAX_README_LINES = 300
# How the project was built is not the reader's business, and the design spec it was built from is not in the
# repository (docs/design.md is the project's own).
BANNED = [r"\bissue[- ]?\d+", r"\bthe issue\b", r"\bsession\b", r"\bhelpers?\b", r"\bthis change\b", r"base commit",
          r"\bwas lent\b", "(?-i:DESIGN)" + r"\s*§", "(?-i:DESIGN)" + r"\.md", r"\bthis round\b"]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def test_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; details belong in docs/"


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_no_process_words(path):
    text = path.read_text()
    hits = [(pat, m.group(0)) for pat in BANNED for m in re.finditer(pat, text, flags=re.I)]
    assert not hits, f"{path.name}: {hits}"


def test_no_references_to_a_design_document_outside_the_repository():
    pat = re.compile("DESIGN" + r"(\s*§|\.md|'s)")
    hits = [f"{p.relative_to(ROOT)}:{i}" for d in ("revgn_cli", "conf", "tests", "bench", "tools")
            for p in sorted((ROOT / d).rglob("*")) if p.suffix in (".py", ".yaml", ".md", ".sh") and p.is_file()
            for i, line in enumerate(p.read_text().splitlines(), 1) if pat.search(line)]
    assert not hits, hits


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_exist(path):
    missing = []
    for target in LINK.findall(path.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        if not (path.parent / target.split("#", 1)[0]).exists():
            missing.append(target)
    assert not missing, f"{path.relative_to(ROOT)} links to missing files: {missing}"


def test_link_checker_sees_a_dangling_link(tmp_path):
    (tmp_path / "a.md").write_text("[ok](a.md) [x](https://x.org) [gone](docs/nope.md#s) ![img](i.png)")
    found = [t for t in LINK.findall((tmp_path / "a.md").read_text())
             if not re.match(r"[a-z]+:", t) and not (tmp_path / t.split("#")[0]).exists()]
    assert found == ["docs/nope.md#s", "i.png"]


def test_readme_findings_are_marked_for_regeneration():
    text = README.read_text()
    assert "<!-- findings: from docs/figures/claims.md -->" in text
    assert "(docs/figures/claims.md)" in text


# Run ids quoted in a page (output tables, `runs show ID`, `compare ID ID`) are ones its own commands produce: the
# hash of the config their overrides compose to. A new config key with a default changes every id, and then this
# test names the page to regenerate (run its commands again and copy the output).
RUN_ID = re.compile(r"(?<![0-9A-Za-z_])(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{8}(?:[0-9a-f]{4})?(?![0-9A-Za-z_])")


def page_commands(path: Path) -> list[list[str]]:
    out = []
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", path.read_text(), flags=re.S | re.M):
        for line in block.splitlines():
            line = line.split("  #", 1)[0].strip()
            if line.startswith("revgn "):
                out.append(shlex.split(line)[1:])
    return out


def produced_ids(path: Path) -> set[str]:
    from revgn_cli.config import ConfigError, compose_config, run_id
    from revgn_cli.sweep import expand

    ids = set()
    for args in page_commands(path):
        if not args or args[0] not in ("train", "sweep"):
            continue
        overrides = [a for a in args[1:] if "=" in a and not a.startswith("-")]
        try:
            cfgs = [compose_config(overrides)] if args[0] == "train" else [j.cfg for j in expand(overrides)]
        except ConfigError:
            continue  # a placeholder (DIR, …): it names no run
        ids |= {run_id(c) for c in cfgs}
    return ids


def test_run_id_pattern():
    assert RUN_ID.findall("95f7d7cc done; results/first/1f67df51eb15 x 882c921 deadbeefs 12345678 abcdefab") == \
        ["95f7d7cc", "1f67df51eb15"]


@pytest.mark.parametrize("path", [p for p in [README, *DOCS] if RUN_ID.search(p.read_text())],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_quoted_run_ids_come_from_the_pages_commands(path):
    quoted = set(RUN_ID.findall(path.read_text()))
    ids = produced_ids(path)
    stale = sorted(q for q in quoted if not any(i.startswith(q) for i in ids))
    assert not stale, (f"{path.relative_to(ROOT)} quotes run ids its commands do not produce: {stale} — rerun the "
                       f"page's commands and copy their output")
