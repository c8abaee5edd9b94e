"""Typed experiment configuration: Hydra structured configs (the single source of truth).

The dataclasses below are registered in Hydra's ConfigStore as the schema of ``conf/config.yaml``; every group
option in ``conf/`` is merged into them, so an unknown key or a wrong type in a preset or an override is an error,
never a silent default. ``compose_config`` is the Compose-API entry used by ``revgn train``; ``revgn sweep`` enters
through ``revgn_cli.sweep_app`` (a real ``@hydra.main`` app, so launchers work — docs/design.md).
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from revgn_cli.confinfo import conf_dir  # noqa: F401 — re-exported: callers import it from here

VERSION_BASE = "1.3"


class ConfigError(ValueError):
    """A configuration that composes but makes no sense (negative sizes, lr=nan, …). One-line message."""


@dataclass
class DatasetConfig:
    name: str = "mnist5k"  # mnist5k | digits | mnist | cifar10
    root: Optional[str] = None  # data root; None → $REVGN_DATA or ~/.cache/revgn
    augment: Optional[str] = None  # cifar10 only: None | "crop" | "crop_flip"


@dataclass
class ModelConfig:
    n_blocks: int = 2
    hidden: Optional[int] = 1024  # None → no-bottleneck variant (paper Fig. 5)
    init_std: float = 1e-3  # standard deviation of the trained weights at init (not the variance)
    first_block_linear: bool = True


@dataclass
class OptimizerConfig:
    name: str = "gn"  # gn | adam | sgd | linearised | ggn_cg | kfac
    lr: float = 0.5
    combine: str = "sum"  # GN: sum (paper code) | mean (a true right inverse)
    loss_hessian: str = "identity"  # GN with CE: identity | exact
    solver: str = "auto"  # GN: auto (per regulariser the cheapest exact path, docs/gn.md) | eigh (always eigh)
    momentum: float = 0.0  # SGD
    beta1: float = 0.9  # Adam
    beta2: float = 0.999
    eps: float = 1e-8
    # optimizer=linearised: train the first-order Taylor model about θ_s, re-linearising every K steps.
    inner: str = "sgd"  # inner optimiser of the linearised model: sgd | adam
    relinearise_every: Optional[int] = None  # K; None = ∞ (the NTK-at-init model)
    # optimizer=ggn_cg | kfac: damped GN steps Δθ ≈ (G + λI)⁻¹g (revgn_cli/optim/damped.py); loss_hessian as GN's.
    damping: float = 1.0e-3  # λ (the start value under damping_schedule=lm)
    damping_schedule: str = "fixed"  # fixed | lm (Levenberg-Marquardt adaptation after each step; ggn_cg only)
    lm_factor: float = 1.5  # lm: λ ← λ·f when the reduction ratio ρ < 1/4, λ/f when ρ > 3/4 (Martens 2010)
    cg_iters: int = 50  # ggn_cg: at most this many CG iterations (GGN mat-vecs) per step
    cg_tol: float = 1.0e-4  # ggn_cg: stop CG once ‖r‖ <= cg_tol·‖g‖
    # ggn_cg: cg (conjugate gradient, cg_iters/cg_tol) | kernel (the same damped system solved exactly through the
    # batch's logit NTK, revgn_cli/optim/kernel_solve.py; cg_iters/cg_tol unused)
    ggn_solve: str = "cg"
    curvature_every: int = 1  # kfac: recompute the Kronecker factors every this many steps
    kfac_step: str = "rescale"  # kfac: plain (θ − lr·Δθ) | rescale (M&G §6.4 quadratic-model α) | momentum (α, μ, §7)


@dataclass
class RegimeConfig:
    name: str = "full_batch"  # full_batch | mini_batch
    n_samples: int = 1024  # full_batch: size N of the fixed training subset
    subset: str = "first"  # full_batch: first (paper) | random (seeded)
    batch_size: int = 1024  # mini_batch: B (drop_last false)
    # Validation images held out of the TRAINING set (never the test set): seeded (VAL_SEED), stratified; the run
    # trains on the rest (full_batch takes its N from the rest) and logs val_loss / val_acc. 0 = no hold-out.
    val_size: int = 0
    # Training images used (after the hold-out): a seeded, class-stratified subset whose smaller sizes are prefixes of
    # the larger (revgn_cli.data.split.nested_stratified_order), the test set untouched. None = every image.
    train_size: Optional[int] = None


@dataclass
class RegularizerConfig:
    name: str = "truncation"  # none | truncation | damping | noise | weight_decay
    rtol: float = 1e-2  # truncation (and weight_decay, noise): drop s < rtol·s_max …
    atol: float = 1e-5  # … or s < atol (paper code)
    damping: float = 1e-3  # damping: λ = damping·s_max²
    noise: float = 0.1  # noise: scale of the Gaussian added to the target, relative to its rms (docs/gn.md)
    weight_decay: float = 0.0  # weight_decay: λ in θ ← θ − α(Δθ + λθ)


@dataclass
class TrainConfig:
    epochs: int = 20
    loss: str = "ce"  # ce | mse
    eval_every: int = 1  # epochs between train/test evaluations
    eval_chunk: int = 2048  # samples per forward pass in evaluation (memory bound at paper scale)
    checkpoint_every: int = 5  # epochs between checkpoints (and on SIGINT/SIGTERM)
    diverge_factor: float = 1e3  # stop as `diverged` when loss > factor × initial loss (or non-finite)
    switch_epoch: Optional[int] = None  # fig7: after this many epochs continue with `switch_to`
    switch_to: Optional[str] = None  # gn | adam | sgd
    switch_lr: Optional[float] = None
    spawn_epoch: Optional[int] = None  # data-dependent NTK: train fully to this epoch, then linearised about θ_t
    data_seed: Optional[int] = None  # seed of the batch order (and augmentation); None = `seed`
    init_from: Optional[str] = None  # start from another run's weights: a checkpoint .pt file (e.g. epoch_10.pt)
    keep_checkpoints: list[int] = field(default_factory=list)  # also keep checkpoints/epoch_<e>.pt at these epochs


@dataclass
class MetricsConfig:
    every: int = 1  # `unit`s between diagnostics (NTK, CKA, weights); 0 = off
    unit: str = "epoch"  # epoch: in the epoch rows | step: every `every` updates, in the step rows (+ init row)
    probe_size: int = 100  # NTK probe set P (first training samples)
    cka_probe_size: int = 1024  # CKA probe set (first training samples; capped at the train size)
    # The paper's feature-space NTK sketch (ntk_feat_* columns): probe = first n training samples (capped at the
    # train size; 0 = off); the alignment to init is Hutchinson's estimate over `ntk_feature_probes` Gaussian n×d
    # probes, probe i seeded with `ntk_feature_seed` + i (one probe = the official code's single-probe cosine).
    ntk_feature_probe_size: int = 1024
    ntk_feature_seed: int = 0
    ntk_feature_probes: int = 8
    ntk: bool = True
    cka: str = "linear"  # linear | debiased | off
    weights: bool = True
    loss_change: bool = True  # per step: loss on the same batch after the update (one extra forward)
    loss_change_every: int = 1  # measure it after every k-th update (1 = each update, the paper's Fig. 3)
    # per step: ‖J_Z Δθ‖/‖ε_Z‖ of the applied update on its batch (step rows: every update of the first
    # `step_size_dense_epochs` epochs, then the first update of each epoch; NaN elsewhere)
    step_size_ratio: bool = True
    step_size_dense_epochs: int = 1


@dataclass
class TuneConfig:
    """``revgn tune``'s protocol (revgn_cli/tune.py); never part of a run id (it does not change training)."""

    grid: dict[str, list[float]] = field(default_factory=dict)  # optimizer name → learning rates to try
    # optimizer name → rates beyond its grid, tried one at a time (the nearest first) while the chosen rate is the
    # largest (or smallest) rate tried, so that a choice at the grid's edge is checked against the next rate out.
    extend: dict[str, list[float]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [42, 43, 44])
    val_size: int = 1000  # training images held out for validation (regime.val_size of the tune runs)
    # Keys the preset sweeps besides optimizer and seed whose every value is tuned on its own (fig5: [regime],
    # fig8: [model.init_std]): each value is a setting with its own record entry and its own chosen rates.
    per: list[str] = field(default_factory=list)
    # A preset whose tuned rates this one trains at instead of tuning itself (fig6, fig7: minibatch_quick, the same
    # model, data and batch; only the run length differs).
    rates_from: Optional[str] = None
    # Optimisers whose learning rate is the figure's own axis (fig12: [gn]): the tuned protocol keeps the preset's
    # rates for them, and only the others (and the claim's reference presets) move to their tuned rates.
    fixed: list[str] = field(default_factory=list)


@dataclass
class Config:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    regime: RegimeConfig = field(default_factory=RegimeConfig)
    regularizer: RegularizerConfig = field(default_factory=RegularizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    exp_name: str = "default"  # results/<exp_name>/<run_id>/ (presets in conf/experiment/ set it)
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "float32"  # float32 | float64
    results_dir: str = "results"
    scale: str = "quick"  # label of the preset scale: quick | paper
    extra: dict[str, Any] = field(default_factory=dict)  # free-form tags for studies (kept in the run id)


# Keys that name where output goes or how it is shown, or how `revgn tune` picks rates (its runs set
# optimizer.lr and regime.val_size themselves); they never change the numbers, so the run id ignores them.
NON_IDENTITY_KEYS = ("results_dir", "device", "tune")


def register_configs() -> None:
    ConfigStore.instance().store(name="revgn_schema", node=Config)


register_configs()

CHOICES = {
    "optimizer.name": ("gn", "adam", "sgd", "linearised", "ggn_cg", "kfac"),
    "optimizer.damping_schedule": ("fixed", "lm"),
    "optimizer.kfac_step": ("plain", "rescale", "momentum"),
    "optimizer.combine": ("sum", "mean"),
    "optimizer.loss_hessian": ("identity", "exact"),
    "optimizer.solver": ("auto", "eigh"),
    "optimizer.ggn_solve": ("cg", "kernel"),
    "optimizer.inner": ("sgd", "adam"),
    "regime.name": ("full_batch", "mini_batch"),
    "regime.subset": ("first", "random"),
    "regularizer.name": ("none", "truncation", "damping", "noise", "weight_decay"),
    "train.loss": ("ce", "mse"),
    "metrics.cka": ("linear", "debiased", "off"),
    "metrics.unit": ("epoch", "step"),
    "device": ("auto", "cpu", "cuda"),
    "precision": ("float32", "float64"),
    "scale": ("quick", "paper"),
}


def _get(cfg: Config, dotted: str) -> Any:
    obj: Any = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


EXP_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+=,-]*")
EXP_NAME_MAX = 100  # characters: a folder name (file systems allow 255 bytes; paths and the lock file need room)


def validate(cfg: Config) -> Config:
    """Reject values that compose but cannot run; each failure is one line naming the key."""
    for key, allowed in CHOICES.items():
        val = _get(cfg, key)
        if val not in allowed:
            raise ConfigError(f"{key}={val!r} is not one of {', '.join(allowed)}")
    positive_ints = ["model.n_blocks", "regime.n_samples", "regime.batch_size", "train.eval_every",
                     "train.eval_chunk", "train.checkpoint_every", "metrics.loss_change_every",
                     "metrics.ntk_feature_probes", "optimizer.cg_iters", "optimizer.curvature_every"]
    for key in positive_ints:
        if _get(cfg, key) < 1:
            raise ConfigError(f"{key} must be >= 1, got {_get(cfg, key)}")
    for key in ["train.epochs", "metrics.every", "metrics.probe_size", "metrics.cka_probe_size", "regime.val_size",
                "metrics.ntk_feature_probe_size", "metrics.step_size_dense_epochs"]:
        if _get(cfg, key) < 0:
            raise ConfigError(f"{key} must be >= 0, got {_get(cfg, key)}")
    if cfg.regime.train_size is not None and cfg.regime.train_size < 1:
        raise ConfigError(f"regime.train_size must be >= 1 or null (every image), got {cfg.regime.train_size}")
    if cfg.model.hidden is not None and cfg.model.hidden < 1:
        raise ConfigError(f"model.hidden must be >= 1 or null, got {cfg.model.hidden}")
    if cfg.metrics.ntk and cfg.metrics.every > 0 and cfg.metrics.probe_size == 0:  # it used to drop the NTK silently
        raise ConfigError("metrics.probe_size=0 leaves the NTK no probe samples: use metrics.ntk=false to turn it off")
    positive_floats = ["optimizer.lr", "train.diverge_factor"]
    for key in positive_floats:
        v = _get(cfg, key)
        if not (math.isfinite(v) and v > 0):
            raise ConfigError(f"{key} must be a finite number > 0, got {v}")
    nonneg_floats = ["model.init_std", "optimizer.momentum", "optimizer.eps", "optimizer.damping", "optimizer.cg_tol",
                     "regularizer.rtol",
                     "regularizer.atol", "regularizer.damping", "regularizer.noise", "regularizer.weight_decay"]
    for key in nonneg_floats:
        v = _get(cfg, key)
        if not (math.isfinite(v) and v >= 0):
            raise ConfigError(f"{key} must be a finite number >= 0, got {v}")
    for key in ["optimizer.beta1", "optimizer.beta2"]:
        v = _get(cfg, key)
        if not (0 <= v < 1):
            raise ConfigError(f"{key} must be in [0, 1), got {v}")
    if cfg.regularizer.rtol >= 1:
        raise ConfigError(f"regularizer.rtol must be < 1 (it truncates every singular value), got {cfg.regularizer.rtol}")
    o = cfg.optimizer
    if not (math.isfinite(o.lm_factor) and o.lm_factor > 1):
        raise ConfigError(f"optimizer.lm_factor must be a finite number > 1, got {o.lm_factor}")
    if o.name == "kfac" and o.damping <= 0:
        raise ConfigError("optimizer.damping must be > 0 for kfac (its Kronecker factors are rank-deficient)")
    if o.name == "kfac" and o.damping_schedule != "fixed":
        raise ConfigError("optimizer.damping_schedule=lm is implemented for ggn_cg only (kfac: fixed)")
    k = cfg.optimizer.relinearise_every
    if k is not None and k < 1:
        raise ConfigError(f"optimizer.relinearise_every must be >= 1 or null (= infinity), got {k}")
    t = cfg.train
    if (t.switch_epoch is None) != (t.switch_to is None):
        raise ConfigError("train.switch_epoch and train.switch_to go together (set both or neither)")
    if t.switch_to is not None and t.switch_to not in ("gn", "adam", "sgd"):
        raise ConfigError(f"train.switch_to={t.switch_to!r} is not one of gn, adam, sgd")
    if t.switch_lr is not None and not (math.isfinite(t.switch_lr) and t.switch_lr > 0):
        raise ConfigError(f"train.switch_lr must be a finite number > 0, got {t.switch_lr}")
    for key in ["train.switch_epoch", "train.spawn_epoch"]:
        v = _get(cfg, key)
        if v is not None and not (0 <= v <= t.epochs):
            raise ConfigError(f"{key} must be in [0, train.epochs={t.epochs}], got {v}")
    for e in t.keep_checkpoints:
        if not 0 <= e <= t.epochs:
            raise ConfigError(f"train.keep_checkpoints entry {e} is outside [0, train.epochs={t.epochs}]")
    if t.spawn_epoch is not None and cfg.optimizer.name == "linearised":
        raise ConfigError("train.spawn_epoch needs a full optimiser (gn, adam, sgd) before the spawn, not linearised")
    if cfg.dataset.augment not in (None, "none", "crop", "crop_flip"):
        raise ConfigError(f"dataset.augment={cfg.dataset.augment!r} is not one of null, none, crop, crop_flip")
    if len(cfg.exp_name or "") > EXP_NAME_MAX:
        raise ConfigError(f"exp_name is {len(cfg.exp_name)} characters long: give at most {EXP_NAME_MAX} "
                          f"(e.g. exp_name={cfg.exp_name[:20]})")
    if not EXP_NAME.fullmatch(cfg.exp_name or ""):
        # results/<exp_name>/ must be a directory of its own: `.` would put runs into the results root, `.hydra`
        # into Hydra's bookkeeping, `a/b` one level too deep — where `revgn runs` cannot see them.
        raise ConfigError(f"exp_name={cfg.exp_name!r} must be a plain name (letters, digits, _ - + = , . ; "
                          "not starting with a dot, no path separator)")
    return cfg


def to_config(node: DictConfig) -> Config:
    """A composed DictConfig (hydra key dropped) → a validated ``Config`` dataclass."""
    node = OmegaConf.masked_copy(node, [k for k in node.keys() if k != "hydra"]) if "hydra" in node else node
    obj = OmegaConf.to_object(node)
    if not isinstance(obj, Config):  # composed without the schema
        obj = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), node))
    return validate(obj)


def preset_optimizer(name: str) -> OptimizerConfig:
    """The optimiser group's preset (conf/optimizer/<name>.yaml) as a typed config: the defaults of a switch and of
    every key a caller of ``make_optimizer`` leaves out."""
    node = OmegaConf.merge(OmegaConf.structured(OptimizerConfig),
                           OmegaConf.load(conf_dir() / "optimizer" / f"{name}.yaml"))
    return OmegaConf.to_object(node)


# Composed configs of this process, keyed by the conf/ tree's state and the overrides: one Hydra compose costs
# 0.1–0.5 s, and `revgn verify` / `reproduce` / the studies compose the same presets many times over.
_COMPOSED: dict[tuple[Any, ...], DictConfig] = {}
_COMPOSED_MAX = 512


def _conf_state(root: Path) -> tuple[tuple[str, int, int], ...]:
    """Every file under ``root`` with its mtime and size: a cached composition is reused only while none changed."""
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    return tuple((str(p), (st := p.stat()).st_mtime_ns, st.st_size) for p in files)


def compose_node(overrides: list[str] | tuple[str, ...] = (), *, hydra: bool = False) -> DictConfig:
    """``conf/config.yaml`` composed by Hydra's Compose API with ``overrides`` (struct mode, not yet validated);
    with ``hydra`` the node also holds the ``hydra`` section (launcher, sweeper params) as a multirun would see it.

    A fresh copy each call (callers may change it); the composition itself is done once per conf/ state."""
    import copy

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    root = conf_dir()
    key = (str(root), _conf_state(root), tuple(overrides), hydra)
    if key not in _COMPOSED:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(root), version_base=VERSION_BASE):
            node = compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra)
        if len(_COMPOSED) >= _COMPOSED_MAX:
            _COMPOSED.clear()
        _COMPOSED[key] = node
    return copy.deepcopy(_COMPOSED[key])


def compose_config(overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Compose ``conf/config.yaml`` with Hydra's Compose API and the given overrides."""
    return to_config(compose_node(overrides))


def config_dict(cfg: Config) -> dict[str, Any]:
    return asdict(cfg)


def run_id(cfg: Config) -> str:
    """Short stable hash of the resolved config, without the keys that only say where output goes."""
    d = config_dict(cfg)
    for k in NON_IDENTITY_KEYS:
        d.pop(k, None)
    # Where the data lives never changes the numbers either; hashed as the default (None) so ids made before
    # this rule stay valid and an explicit dataset.root finds the same run.
    d["dataset"] = {**d["dataset"], "root": None}
    # optimizer.solver=auto (the default) is hashed as if the key were absent, so ids made before it existed stay
    # valid; solver=eigh gets ids of its own (for damping on a float32 model it changes the step, docs/gn.md).
    if d["optimizer"].get("solver") == "auto":
        d["optimizer"] = {k: v for k, v in d["optimizer"].items() if k != "solver"}
    # optimizer.ggn_solve=cg (the default) likewise hashes as absent; kernel gets ids of its own.
    if d["optimizer"].get("ggn_solve") == "cg":
        d["optimizer"] = {k: v for k, v in d["optimizer"].items() if k != "ggn_solve"}
    # regime.train_size=null (every image, the default) likewise hashes as absent: ids made before it stay valid.
    if d["regime"].get("train_size") is None:
        d["regime"] = {k: v for k, v in d["regime"].items() if k != "train_size"}
    # `noise` perturbs each solve's target since it replaced the form that perturbed Σ⁺ (docs/gn.md): its runs are
    # hashed with that fact, so results of the old form are never taken for the new one.
    if d["regularizer"].get("name") == "noise":
        d["regularizer"] = {**d["regularizer"], "noise_on": "target"}
    blob = json.dumps(d, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} → {'a.b': 1}: the override-style keys used by filters and result columns."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
