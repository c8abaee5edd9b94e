"""The one training loop every optimiser runs through (config → data → model → optimiser → rows).

``train_run`` trains the run described by a ``Config`` into its ``RunDir``: it resumes from the last checkpoint
when there is one, logs one row per update (``split="step"``) and one per evaluation (``split="epoch"``, epoch 0 =
at init), checkpoints every ``train.checkpoint_every`` epochs and on a stop signal (SIGINT/SIGTERM/SIGUSR2), and
stops a diverging run.
"""
from __future__ import annotations

import io
import math
import shutil
import signal
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
from torch import Tensor

from revgn_cli.config import Config, ConfigError, OptimizerConfig, preset_optimizer
from revgn_cli.data import Dataset, load_dataset, make_augment
from revgn_cli.devices import to_device
from revgn_cli.metrics import DiagnosticsTracker, loss_change_pct, loss_change_summary
from revgn_cli.metrics.step_size import snapshot, step_size_ratio
from revgn_cli.models import RevMLP
from revgn_cli.optim import batch_loss, make_optimizer
from revgn_cli.results.store import RunDir, atomic_write_bytes
from revgn_cli.train.evaluate import eval_network, evaluate
from revgn_cli.train.runtime import (
    epoch_generator, optimizer_seed, resolve_dtype, rng_state, seed_everything, set_rng_state,
)


class Reporter(Protocol):
    """Progress sink (the CLI passes a rich progress bar; tests pass nothing)."""

    def start(self, total_steps: int, done_steps: int, description: str) -> None: ...
    def advance(self, step: int, epoch: float, loss: float) -> None: ...
    def finish(self) -> None: ...


class NullReporter:
    def start(self, total_steps: int, done_steps: int, description: str) -> None: ...
    def advance(self, step: int, epoch: float, loss: float) -> None: ...
    def finish(self) -> None: ...


class Interrupted(Exception):
    """A stop signal arrived; a checkpoint was written at the last update boundary. ``signum`` says which (a sweep
    job on SLURM hands SIGTERM and SIGUSR2 back to the cluster to be requeued, revgn_cli.cluster.job)."""

    def __init__(self, message: str, signum: int | None = None) -> None:
        super().__init__(message)
        self.signum = signum


class Diverged(Exception):
    pass


@dataclass
class TrainState:
    """Everything a resumed run needs besides the model and optimiser tensors."""

    epoch: int = 0  # completed epochs
    batch: int = 0  # completed batches of epoch `epoch` (mid-epoch checkpoints on a signal)
    step: int = 0  # global number of updates
    phase: int = 0  # index into the optimiser phases (fig7 switch, spawned linearised continuation)
    running_sum: float = 0.0  # sum of pre-update batch losses this epoch (mini-batch running train loss)
    running_n: int = 0
    initial_loss: float = float("nan")
    rows: list[dict[str, Any]] = field(default_factory=list)
    diverged: str | None = None  # why the run stopped as diverged (recorded in meta.json's "error")


@dataclass
class Phase:
    start_epoch: int
    optimizer: OptimizerConfig


def phases(cfg: Config) -> list[Phase]:
    """The optimiser schedule: one phase, or a switch at ``train.switch_epoch`` (paper Fig. 7), or a linearised
    continuation from ``train.spawn_epoch`` (Fort et al. 2020's data-dependent NTK)."""
    out = [Phase(0, cfg.optimizer)]
    t = cfg.train
    if t.switch_epoch is not None and t.switch_to is not None:
        nxt = preset_optimizer(t.switch_to)
        if t.switch_lr is not None:
            nxt = replace(nxt, lr=t.switch_lr)
        out.append(Phase(t.switch_epoch, nxt))
    if t.spawn_epoch is not None:
        lin = replace(preset_optimizer("linearised"), inner=cfg.optimizer.inner,
                      lr=t.switch_lr if t.switch_lr is not None else preset_optimizer("linearised").lr,
                      relinearise_every=None)
        out.append(Phase(t.spawn_epoch, lin))
    return sorted(out, key=lambda p: p.start_epoch)


def current_phase(plan: list[Phase], epoch: int) -> int:
    idx = 0
    for i, p in enumerate(plan):
        if epoch >= p.start_epoch:
            idx = i
    return idx


def build_model(cfg: Config, data: Dataset, device: torch.device, dtype: torch.dtype) -> RevMLP:
    m = cfg.model
    model = RevMLP(data.d, m.n_blocks, m.hidden, n_classes=data.n_classes, init_std=m.init_std,
                   first_block_linear=m.first_block_linear, seed=cfg.seed)
    return model.to(device=device, dtype=dtype)


# Seed of the validation hold-out (regime.val_size): one fixed split of a dataset's training images, the same for
# every seed and optimiser, so that rates tuned on it are compared on the same images.
VAL_SEED = 0


def hold_out(cfg: Config, data: Dataset) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x_rest, y_rest, x_val, y_val): ``regime.val_size`` training images held out (seeded, stratified by class,
    ``revgn_cli.data.split.stratified_split``), the rest in their original order. Never touches the test set."""
    from revgn_cli.data.split import stratified_split

    n_all, k = data.x_train.shape[0], cfg.regime.val_size
    if k == 0:
        return data.x_train, data.y_train, data.x_train[:0], data.y_train[:0]
    if k >= n_all:
        raise ConfigError(f"regime.val_size={k} leaves none of the {n_all} training samples of {data.name} to train on")
    rest, val = stratified_split(data.y_train.numpy(), k, seed=VAL_SEED)
    rest, val = torch.from_numpy(np.sort(rest)), torch.from_numpy(np.sort(val))
    return data.x_train[rest], data.y_train[rest], data.x_train[val], data.y_train[val]


# Seed of the training subset (regime.train_size): one nested family of subsets, the same for every seed and
# optimiser, so a data-size axis compares methods on the same images and larger sizes contain the smaller.
SUBSET_SEED = 0


def train_subset(x: Tensor, y: Tensor, n: int, what: str) -> tuple[Tensor, Tensor]:
    """The first ``n`` images of ``nested_stratified_order`` (stratified, prefix-stable), in their original order."""
    from revgn_cli.data.split import nested_stratified_order

    if n > x.shape[0]:
        raise ConfigError(f"regime.train_size={n} exceeds the {x.shape[0]} training samples of {what}")
    idx = torch.from_numpy(np.sort(nested_stratified_order(y.numpy(), SUBSET_SEED)[:n]))
    return x[idx], y[idx]


def select_train(cfg: Config, data: Dataset) -> tuple[Tensor, Tensor]:
    """The samples training sees: the fixed subset of N (full batch) or the whole train set (mini-batch), both
    after the validation hold-out (``hold_out``) is removed and within ``regime.train_size`` (``train_subset``)."""
    x, y, _, _ = hold_out(cfg, data)
    r = cfg.regime
    rest = f" left after regime.val_size={r.val_size}" if r.val_size else ""
    if r.train_size is not None:
        x, y = train_subset(x, y, r.train_size, f"{data.name}{rest}")
        rest = f" of regime.train_size={r.train_size}"
    n_all = x.shape[0]
    if r.name == "full_batch":
        if r.n_samples > n_all:
            raise ConfigError(f"regime.n_samples={r.n_samples} exceeds the {n_all} training samples of {data.name}"
                              + rest)
        if r.subset == "first":
            idx = torch.arange(r.n_samples, device="cpu")  # the dataset is on the host here
        else:
            gen = torch.Generator().manual_seed(cfg.seed)
            idx = torch.randperm(n_all, generator=gen, device="cpu")[: r.n_samples]
        return x[idx], y[idx]
    if r.batch_size > n_all:
        raise ConfigError(f"regime.batch_size={r.batch_size} exceeds the {n_all} training samples of {data.name}"
                          + rest)
    return x, y


def batches_of_epoch(cfg: Config, n: int, epoch: int, data_seed: int) -> list[Tensor]:
    if cfg.regime.name == "full_batch":
        return [torch.arange(n, device="cpu")]
    # Drawn on the host from a host generator: the same batch order on every device (the loop queues it over).
    perm = torch.randperm(n, generator=epoch_generator(data_seed, epoch), device="cpu")
    return list(torch.split(perm, cfg.regime.batch_size))


def _onehot(y: Tensor, c: int, dtype: torch.dtype) -> Tensor:
    return torch.nn.functional.one_hot(y, c).to(dtype)


# What stops a run at its next update boundary, with a checkpoint: Ctrl-C, `kill`/`scancel`/`scontrol requeue`
# (SIGTERM), and SIGUSR2, which SLURM sends before a job's time limit (submitit's `--signal=USR2@signal_delay_s`).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)

# Signals a sweep job caught before its loop started (revgn_cli.sweep_app's handler appends here): the loop then
# stops at its first update boundary instead of training the whole run.
PENDING_SIGNALS: list[int] = []


class _SignalFlag:
    """STOP_SIGNALS set a flag the loop checks at each update boundary (a second SIGINT interrupts at once)."""

    def __init__(self) -> None:
        self.hit: int | None = PENDING_SIGNALS[0] if PENDING_SIGNALS else None
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.hit is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.hit = signum

    def __enter__(self) -> "_SignalFlag":
        for s in STOP_SIGNALS:
            try:
                self._old[s] = signal.signal(s, self._handler)
            except ValueError:  # not the main thread (e.g. a joblib worker thread): leave signals alone
                pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


@dataclass
class TrainData:
    """The tensors one run trains and evaluates on, on its device and in its dtype."""

    data: Dataset
    x_tr: Tensor
    y_tr: Tensor
    x_te: Tensor
    y_te: Tensor
    augment: Callable[[Tensor, torch.Generator], Tensor] | None
    x_va: Tensor | None = None  # the validation hold-out (regime.val_size > 0), else None
    y_va: Tensor | None = None


def epoch_step_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The step rows logged since the last epoch row: the updates of the epoch being closed."""
    out = []
    for r in reversed(rows):
        if r["split"] != "step":
            break
        out.append(r)
    return out[::-1]


def build_tracker(cfg: Config, model: RevMLP, x_tr: Tensor) -> DiagnosticsTracker | None:
    """The run's diagnostics at its current (initial) parameters, or None when ``metrics`` logs none. The NTK probe
    is the first ``probe_size`` training samples, the CKA probe the first ``cka_probe_size`` and the feature-space
    NTK sketch's probe the first ``ntk_feature_probe_size`` (both capped at the set)."""
    m = cfg.metrics
    if m.every <= 0 or not (m.ntk or m.cka != "off" or m.weights):
        return None
    n_feat = min(m.ntk_feature_probe_size, x_tr.shape[0]) if m.ntk else 0
    return DiagnosticsTracker(model, x_tr[: m.probe_size], x_tr[: min(m.cka_probe_size, x_tr.shape[0])],
                              ntk=m.ntk and m.probe_size > 0, cka=m.cka, weights=m.weights,
                              feature_x=x_tr[:n_feat] if n_feat > 0 else None, feature_seed=m.ntk_feature_seed,
                              feature_probes=m.ntk_feature_probes)


def prepare_data(cfg: Config, device: torch.device) -> TrainData:
    """Load and select the data, and check every size that depends on it — before any run dir is touched."""
    dtype = resolve_dtype(cfg.precision)
    data = load_dataset(cfg.dataset.name, cfg.dataset.root)
    x_tr, y_tr = select_train(cfg, data)
    augment = make_augment(data.name, cfg.dataset.augment) if cfg.dataset.augment not in (None, "none") else None
    m = cfg.metrics
    if m.every > 0 and m.ntk and m.probe_size > x_tr.shape[0]:
        raise ConfigError(f"metrics.probe_size={m.probe_size} exceeds the {x_tr.shape[0]} training samples used")
    _, _, x_va, y_va = hold_out(cfg, data)
    val = (x_va.to(device, dtype), y_va.to(device)) if cfg.regime.val_size else (None, None)
    return TrainData(data, x_tr.to(device, dtype), y_tr.to(device), data.x_test.to(device, dtype),
                     data.y_test.to(device), augment, *val)


class _Run:
    """One run being trained: its config, tensors, model, optimiser, tracker and state, and the named steps of the
    loop (set-up and resume, one update, the epoch row, checkpointing) as methods that share them."""

    def __init__(self, cfg: Config, run: RunDir, device: torch.device, td: TrainData, reporter: Reporter,
                 resume: bool, wall: Callable[[], float] | None = None) -> None:
        self.cfg, self.run, self.device, self.td, self.reporter = cfg, run, device, td, reporter
        self.wall = wall
        self.dtype = resolve_dtype(cfg.precision)
        seed_everything(cfg.seed)
        self.model = build_model(cfg, td.data, device, self.dtype)
        self.plan = phases(cfg)
        ck = load_checkpoint(run) if resume and run.ckpt_path.exists() else None
        if ck is None and cfg.train.init_from:
            # Start from another run's weights (parent/child spawning); diagnostics then compare with this start.
            load_weights(self.model, load_checkpoint_file(cfg.train.init_from)["model"],
                         f"train.init_from={cfg.train.init_from}")
        self.tracker = build_tracker(cfg, self.model, td.x_tr)
        self.st = TrainState()
        if ck is not None:
            self.model.load_state_dict(ck["model"])
            self.st = TrainState(**ck["state"])
            self.opt = self.make_opt(self.st.phase)
            self.opt.load_state_dict(ck["optimizer"])
            if self.tracker is not None and ck.get("tracker") is not None:
                self.tracker.load_state_dict(ck["tracker"])
            set_rng_state(ck["rng"])
        else:
            self.opt = self.make_opt(0)
        self.n_tr = td.x_tr.shape[0]
        self.total = cfg.train.epochs * len(batches_of_epoch(cfg, self.n_tr, 0, 0))
        self.data_seed = cfg.train.data_seed if cfg.train.data_seed is not None else cfg.seed
        # Step rows whose after-update loss is still a device tensor: read back together (one host sync) before
        # the rows are summarised or written, so an update reads one number from the device, its loss (issue 17).
        self.pending: list[tuple[dict[str, Any], Tensor]] = []
        self.pending_vals: list[tuple[dict[str, Any], str, Tensor]] = []  # (row, column, 0-d device tensor)

    def make_opt(self, phase: int) -> Any:
        opt_cfg = self.plan[phase].optimizer
        return make_optimizer(self.model, asdict(opt_cfg), asdict(self.cfg.regularizer), loss=self.cfg.train.loss,
                              seed=optimizer_seed(self.cfg.seed, phase))

    def read_back(self) -> None:
        if self.pending:
            for (row, _), after in zip(self.pending, torch.stack([a for _, a in self.pending]).tolist()):
                row["batch_loss_after"] = after
                row["loss_change_pct"] = loss_change_pct(row["batch_loss"], after)
            self.pending.clear()
        if self.pending_vals:
            vals = torch.stack([v.double().to("cpu") for _, _, v in self.pending_vals]).tolist()
            for (row, key, _), v in zip(self.pending_vals, vals):
                row[key] = v
            self.pending_vals.clear()

    def step_size_before(self, bi: int, xb: Tensor) -> tuple | None:
        """What ``step_size_ratio`` needs from before the update, when this update is measured (every update of
        the first ``metrics.step_size_dense_epochs`` epochs, then the first of each epoch), else None."""
        m = self.cfg.metrics
        if not m.step_size_ratio or not (self.st.epoch < m.step_size_dense_epochs or bi == 0):
            return None
        lin = getattr(self.opt, "linearisation_point", None)
        if lin is None:
            return snapshot(self.model), None, None
        with torch.no_grad():  # f_lin: J at the anchor θ_s, Z = f_lin(θ_before)
            return snapshot(self.model), lin(), eval_network(self.opt, self.model)(xb)

    def step_size_after(self, before: tuple, xb: Tensor, tb: Tensor) -> Tensor:
        theta, point, z = before
        return step_size_ratio(self.model, xb, tb, theta, point=point, z_before=z, loss=self.cfg.train.loss)

    def save(self) -> None:
        self.read_back()
        self.run.write_rows(self.st.rows)
        save_checkpoint(self.run, self.model, self.opt, self.tracker, self.st)
        if self.wall is not None:
            # The training time up to this checkpoint, so that a run killed hard (no handler runs) and resumed
            # from it still sums its sittings' time in meta.json's wall_s (work after the checkpoint is redone).
            self.run.write_meta(wall_s=self.wall())
        if self.st.batch == 0 and self.st.epoch in self.cfg.train.keep_checkpoints:
            shutil.copyfile(self.run.ckpt_path, self.run.ckpt_dir / f"epoch_{self.st.epoch}.pt")

    def diagnose_at(self, epoch: int) -> bool:
        # Epoch 0 always: the init row is the reference a step-unit run's first velocity is measured from.
        m = self.cfg.metrics
        return self.tracker is not None and (
            epoch == 0 or (m.unit == "epoch" and (epoch % m.every == 0 or epoch == self.cfg.train.epochs)))

    def losses(self, row: dict[str, Any], diagnose: bool) -> list[Tensor] | None:
        """Train and test loss/accuracy into ``row``; returns the CKA probe's half-coupling states when the
        diagnostics' forward pass was shared with the train evaluation, else None."""
        cfg, td, model = self.cfg, self.td, self.model
        C, reps, head = td.data.n_classes, None, None
        net = eval_network(self.opt, model)  # linearised runs: the tangent model they train, not model(x)
        if diagnose and net is model:
            # The CKA probe is the first training samples: one forward gives its block outputs and its logits.
            reps = self.tracker.cka_outputs(model)
            head = model.logits(reps[-1]) if reps else None
        row["train_loss"], row["train_acc"] = evaluate(net, td.x_tr, td.y_tr, C, cfg.train.loss, cfg.train.eval_chunk,
                                                       head_logits=head)
        row["test_loss"], row["test_acc"] = evaluate(net, td.x_te, td.y_te, C, cfg.train.loss, cfg.train.eval_chunk)
        if td.x_va is not None:
            row["val_loss"], row["val_acc"] = evaluate(net, td.x_va, td.y_va, C, cfg.train.loss, cfg.train.eval_chunk)
        return reps

    def eval_row(self, epoch: int) -> dict[str, Any]:
        self.read_back()
        st, cfg = self.st, self.cfg
        row: dict[str, Any] = {"run_id": self.run.run_id, "epoch": float(epoch), "step": st.step, "split": "epoch"}
        diagnose = self.diagnose_at(epoch)
        reps = None
        if epoch == 0 or epoch % cfg.train.eval_every == 0 or epoch == cfg.train.epochs:
            reps = self.losses(row, diagnose)
        if st.running_n:
            row["train_loss_running"] = st.running_sum / st.running_n
        row.update(loss_change_summary([r["loss_change_pct"] for r in epoch_step_rows(st.rows)
                                        if "loss_change_pct" in r]))
        if diagnose:
            row.update(self.tracker.compute(self.model, float(epoch), reps=reps))
        for k, v in getattr(self.opt, "stats", {}).items():
            row[k] = float(v)
        row["phase"] = float(st.phase)
        return row

    def update(self, idx: Tensor, bi: int, n_batches: int) -> float:
        """One optimiser step on the batch ``idx`` (the ``bi``-th of ``n_batches``) and its step row."""
        cfg, st, m, td = self.cfg, self.st, self.cfg.metrics, self.td
        xb, tb = td.x_tr[idx], _onehot(td.y_tr[idx], td.data.n_classes, self.dtype)
        if td.augment is not None:
            xb = td.augment(xb, epoch_generator(self.data_seed + 1, st.step))
        before = self.step_size_before(bi, xb)
        loss_before = float(self.opt.step(xb, tb))
        st.step += 1
        st.batch = bi + 1
        row: dict[str, Any] = {"run_id": self.run.run_id, "epoch": st.epoch + (bi + 1) / n_batches,
                               "step": st.step, "split": "step", "batch_loss": loss_before}
        if before is not None:
            self.pending_vals.append((row, "step_size_ratio", self.step_size_after(before, xb, tb)))
            row["step_size_ratio"] = math.nan  # read_back fills it
        if m.loss_change and st.step % m.loss_change_every == 0:
            with torch.no_grad():
                self.pending.append((row, batch_loss(eval_network(self.opt, self.model)(xb), tb, cfg.train.loss)))
            row["batch_loss_after"] = row["loss_change_pct"] = math.nan  # read_back fills them
        if self.tracker is not None and m.unit == "step" and (st.step % m.every == 0 or st.step == self.total):
            row.update(self.tracker.compute(self.model, row["epoch"]))
        st.rows.append(row)
        st.running_sum += loss_before
        st.running_n += 1
        self.reporter.advance(st.step, row["epoch"], loss_before)
        return loss_before

    def check_divergence(self, loss: float) -> None:
        st, factor = self.st, self.cfg.train.diverge_factor
        if not math.isfinite(loss) or loss > factor * st.initial_loss:
            raise Diverged(f"batch loss {loss:.4g} at step {st.step}: not finite or above "
                           f"train.diverge_factor={factor:g} × the initial loss {st.initial_loss:.4g}")

    def epoch(self, sig: _SignalFlag) -> None:
        """The rest of epoch ``st.epoch`` (from batch ``st.batch``), its epoch row and its checkpoint."""
        st, cfg = self.st, self.cfg
        ph = current_phase(self.plan, st.epoch)
        if ph != st.phase:
            st.phase = ph
            self.opt = self.make_opt(ph)
        # On the device once per epoch, queued (a per-update .to(device) would be a host sync each).
        order = [to_device(b, self.device) for b in batches_of_epoch(cfg, self.n_tr, st.epoch, self.data_seed)]
        for bi in range(st.batch, len(order)):
            self.check_divergence(self.update(order[bi], bi, len(order)))
            if sig.hit is not None:
                self.save()
                raise Interrupted(f"signal {sig.hit} at step {st.step}", sig.hit)
        st.epoch += 1
        st.rows.append(self.eval_row(st.epoch))
        st.batch, st.running_sum, st.running_n = 0, 0.0, 0
        if (st.epoch % cfg.train.checkpoint_every == 0 or st.epoch == cfg.train.epochs
                or st.epoch in cfg.train.keep_checkpoints):
            self.save()
        else:
            self.run.write_rows(st.rows)

    def train(self) -> str:
        st, status = self.st, "done"
        self.reporter.start(self.total, st.step, f"{self.cfg.optimizer.name} · {self.td.data.name} · "
                                                 f"{self.cfg.regime.name}")
        with _SignalFlag() as sig:
            if st.step == 0 and not st.rows:
                first = self.eval_row(0)
                st.initial_loss = first["train_loss"]
                st.rows.append(first)
                self.save()
            try:
                while st.epoch < self.cfg.train.epochs:
                    self.epoch(sig)
            except Diverged as e:
                status, st.diverged = "diverged", str(e)
                self.read_back()
                self.run.write_rows(st.rows)
            finally:
                self.reporter.finish()
        return status


def train_run(cfg: Config, run: RunDir, device: torch.device, td: TrainData, reporter: Reporter | None = None,
              resume: bool = True, wall: Callable[[], float] | None = None) -> tuple[str, TrainState]:
    """Train ``cfg`` into ``run``; return (status, final state) with status ``done`` or ``diverged``.

    ``wall``, when given, returns the run's training time so far in seconds (earlier sittings included); each
    checkpoint writes it to meta.json's ``wall_s``.

    Raises ``Interrupted`` after checkpointing on a stop signal; any other exception propagates (the caller
    marks the run ``failed``; its last checkpoint stays for a resume).
    """
    r = _Run(cfg, run, device, td, reporter or NullReporter(), resume, wall)
    status = r.train()
    return status, r.st


def save_checkpoint(run: RunDir, model: torch.nn.Module, opt: Any, tracker: Any, st: TrainState) -> None:
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                "tracker": tracker.state_dict() if tracker is not None else None,
                "state": asdict(st), "rng": rng_state()}, buf)
    atomic_write_bytes(run.ckpt_path, buf.getvalue())


def load_weights(model: torch.nn.Module, state: dict[str, Tensor], source: str) -> None:
    """``model.load_state_dict(state)``, but a missing, extra or differently shaped tensor is one ``ConfigError``
    naming it and both shapes (torch's own message lists every mismatch over many lines)."""
    own = model.state_dict()
    for k, v in own.items():
        if k not in state:
            raise ConfigError(f"{source}: the checkpoint has no tensor {k} — it is from another architecture")
        if tuple(state[k].shape) != tuple(v.shape):
            raise ConfigError(f"{source}: tensor {k} has shape {tuple(state[k].shape)} in the checkpoint but "
                              f"{tuple(v.shape)} in this model — it is from another architecture (model.*, dataset)")
    extra = sorted(set(state) - set(own))
    if extra:
        raise ConfigError(f"{source}: the checkpoint's tensor {extra[0]} is not in this model — it is from another "
                          "architecture")
    model.load_state_dict(state)


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    from revgn_cli.results.store import StoreError

    path = Path(path).expanduser()
    if not path.is_file():
        raise StoreError(f"checkpoint {path} does not exist")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated or foreign file (the cause is in the line, not chained: said once)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise StoreError(f"unreadable checkpoint {path} (not a revgn checkpoint, or truncated): {first}") from None
    if not isinstance(ck, dict) or "model" not in ck:
        raise StoreError(f"{path} is not a revgn checkpoint")
    return ck


def load_checkpoint(run: RunDir) -> dict[str, Any]:
    from revgn_cli.results.store import StoreError

    try:
        return load_checkpoint_file(run.ckpt_path)
    except StoreError as e:
        raise StoreError(f"{e} (rerun with --force to start the run afresh)") from None
