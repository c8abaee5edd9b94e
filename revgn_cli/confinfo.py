"""Where the Hydra configs live and what they offer (groups, options, experiment presets) — without importing
Hydra, so ``revgn train --help`` can list them and still start fast."""
from __future__ import annotations

import os
from pathlib import Path


def conf_dir() -> Path:
    """Where the Hydra configs live: ``$REVGN_CONF`` or the repository's ``conf/`` beside the package."""
    env = os.environ.get("REVGN_CONF")
    return Path(env).resolve() if env else Path(__file__).resolve().parent.parent / "conf"


def config_groups(root: Path | None = None) -> dict[str, list[str]]:
    """Config group → its options (``conf/<group>/<option>.yaml``), e.g. ``{"optimizer": ["adam", "gn", …]}``."""
    root = root or conf_dir()
    if not root.is_dir():
        return {}
    return {g.name: sorted(p.stem for p in g.glob("*.yaml"))
            for g in sorted(root.iterdir()) if g.is_dir() and not g.name.startswith((".", "_", "hydra"))}


def groups_help(root: Path | None = None) -> str:
    """The config groups and presets as help text (one paragraph per group; rich markup)."""
    lines = []
    for group, options in config_groups(root).items():
        lines.append(f"[bold]{group}[/]=" + " | ".join(options))
    return "\n\n".join(["[bold]Config groups[/] (choose with group=option; `revgn train --show-config` prints the "
                        "result):", *lines])
