"""The two protocols a claim is judged under (docs/figures.md, "How claims are judged").

* **paper**: the preset's own runs, at the paper's learning rates (the preset's grid as it is).
* **tuned**: the same grid on the full training set, each optimiser at the rate ``revgn tune <preset>`` chose on a
  validation split (``revgn_cli.tune.tuned_rates``): per optimiser, the preset's jobs with
  ``optimizer=<name> optimizer.lr=<chosen>`` — per value of the axes the preset tunes one at a time (``tune.per``),
  from another preset's record (``tune.rates_from``), or at the preset's own rates for an optimiser whose rate is
  the figure's axis (``tune.fixed``). A preset without a tune record has no tuned runs; the claim's tuned row says
  so and names the command.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

PROTOCOLS = ("paper", "tuned")


class NoTunedRates(Exception):
    """No tune record for a preset (or no tuner): the tuned protocol cannot be measured; the message is the fix."""


def setting_overrides(overrides: Iterable[str]) -> list[str]:
    """The overrides that define a tuning *setting*: not the seeds (a demo's ``seed=42,43,44`` runs the same
    setting as the reference set), not where results go or which device runs them."""
    from revgn_cli.figures.data import identity_overrides

    return [o for o in identity_overrides(overrides) if not o.lstrip("+~").startswith("seed=")]


def tuned_rates_for(preset: str, results_dir: str | Path, overrides: Iterable[str] = ()) -> dict[str, float]:
    """optimizer name → the tuned rate of ``preset`` in this setting; ``NoTunedRates`` (naming the command) if none."""
    try:
        from revgn_cli.tune import TuneMissing, tuned_rates
    except ImportError as e:  # pragma: no cover - the tuner ships with revgn; this guards a partial install
        raise NoTunedRates(f"no tuner available ({e})") from e
    try:
        rates = tuned_rates(results_dir, preset, setting_overrides(overrides))
    except TuneMissing as e:
        raise NoTunedRates(str(e)) from e
    if not rates:
        raise NoTunedRates(f"the tune record of {preset} chose no rate")
    return {str(k): float(v) for k, v in rates.items()}


def tuned_variants(rates: dict[str, float]) -> list[tuple[str, ...]]:
    """One override set per optimiser: its jobs at its chosen rate (replaces the preset's optimiser axis)."""
    return [(f"optimizer={o}", f"optimizer.lr={r!r}") for o, r in rates.items()]


def tuned_variants_for(preset: str, results_dir: str | Path, overrides: Iterable[str] = ()) -> list[tuple[str, ...]]:
    """The preset's jobs under the tuned protocol, as override sets (``revgn_cli.tune.tune_plan``): per value of its
    ``tune.per`` axes and per optimiser it runs, ``optimizer=<o> optimizer.lr=<chosen>`` (the rates of its
    ``tune.rates_from`` preset if it names one; a switch to another optimiser at that one's chosen rate); a
    ``tune.fixed`` optimiser keeps the preset's own rates. ``NoTunedRates`` (naming the command) if a record is
    missing."""
    from revgn_cli.tune import tune_plan

    ov = setting_overrides(overrides)
    plan = tune_plan(preset, ov)
    out: list[tuple[str, ...]] = []
    for cell in plan.cells:
        rates = tuned_rates_for(plan.source, results_dir, [*ov, *cell]) if plan.tuned else {}
        for o in plan.optimizers:
            if o in plan.fixed:
                out.append((*cell, f"optimizer={o}"))
                continue
            if o not in rates:
                raise NoTunedRates(f"the tune record of {plan.source} has no rate for {o}: run `revgn tune "
                                   f"{' '.join([plan.source, *ov, *cell])} optimizer={o}`")
            v = (*cell, *tuned_variants({o: rates[o]})[0])
            to = plan.switch_to.get(o)
            if to:
                if to not in rates:
                    raise NoTunedRates(f"{preset} switches {o} to {to}, which the tune record of {plan.source} has "
                                       f"no rate for")
                v += (f"train.switch_lr={rates[to]!r}",)
            out.append(v)
    return out


def variants_for(presets: Iterable[str], protocol: str, results_dir: str | Path,
                 overrides: Iterable[str] = ()) -> dict[str, list[tuple[str, ...]]] | None:
    """preset → its job variants under ``protocol`` (None for the paper protocol: the presets as they are)."""
    if protocol == "paper":
        return None
    if protocol != "tuned":
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    ov = list(overrides)
    return {p: tuned_variants_for(p, results_dir, ov) for p in presets}


def parse_protocol(value: str | None) -> tuple[str, ...]:
    """``paper`` | ``tuned`` | ``both`` → the protocols to run or report."""
    from revgn_cli.config import ConfigError

    v = (value or "paper").strip().lower()
    if v == "both":
        return PROTOCOLS
    if v in PROTOCOLS:
        return (v,)
    raise ConfigError(f"protocol={value!r} is not one of paper, tuned, both")


TUNE_KEYS = ("grid", "per", "rates_from", "fixed")


def has_tune_grid(preset: str) -> bool:
    """Whether the preset's own file declares how it is tuned (``tune.grid``, ``tune.per``, ``tune.rates_from`` or
    ``tune.fixed``). Read from the file, not the composed config: a preset built on minibatch_quick inherits its
    grid without saying how its own axes are tuned (its tuned row then says which record is missing)."""
    from omegaconf import OmegaConf

    from revgn_cli.config import conf_dir

    path = conf_dir() / "experiment" / f"{preset}.yaml"
    if not path.exists():
        return False
    node = OmegaConf.select(OmegaConf.load(path), "tune", default=None)
    return bool(node) and any(OmegaConf.select(node, k, default=None) for k in TUNE_KEYS)
