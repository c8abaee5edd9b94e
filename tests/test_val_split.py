"""regime.val_size: a seeded, stratified hold-out from the training set, logged as val_loss / val_acc."""
from __future__ import annotations

from collections import Counter

import pandas as pd
import pytest
import torch

from revgn_cli.config import ConfigError, compose_config
from revgn_cli.data import load_dataset
from revgn_cli.train.evaluate import evaluate
from revgn_cli.train.loop import build_model, hold_out, prepare_data, select_train
from revgn_cli.train.runner import execute

BASE = ["dataset=digits", "model=tiny", "device=cpu", "train.epochs=1", "metrics.every=0"]


def _rows(x: torch.Tensor) -> Counter:
    return Counter(r.numpy().tobytes() for r in x)


def test_hold_out_is_stratified_disjoint_and_leaves_the_test_set_alone():
    cfg = compose_config(BASE + ["regime.val_size=200"])
    data = load_dataset("digits", None)
    x, y, xv, yv = hold_out(cfg, data)
    assert xv.shape[0] == 200 and x.shape[0] == data.x_train.shape[0] - 200
    # Rest and hold-out together are exactly the training set (as a multiset of images).
    assert _rows(x) + _rows(xv) == _rows(data.x_train)
    # Every class within ±1 of its proportional share of the 200.
    share = torch.bincount(data.y_train, minlength=10).double() * 200 / data.y_train.shape[0]
    assert (torch.bincount(yv, minlength=10).double() - share).abs().max() < 1 + 1e-9
    # The rest keeps the training order (full_batch's "first N" stays the first N of what is left).
    first = {}
    for i, r in enumerate(data.x_train):
        first.setdefault(r.numpy().tobytes(), i)
    pos = [first[r.numpy().tobytes()] for r in x]
    assert pos == sorted(pos)
    # Seeded: the same split every time, and whatever the run's seed.
    _, _, xv2, _ = hold_out(compose_config(BASE + ["regime.val_size=200", "seed=7"]), data)
    assert torch.equal(xv, xv2)
    td = prepare_data(cfg, torch.device("cpu"))
    assert torch.equal(td.x_te, data.x_test) and torch.equal(td.x_va, xv)


def test_full_batch_takes_its_n_samples_after_the_hold_out():
    cfg = compose_config(BASE + ["regime=full_batch", "regime.n_samples=300", "regime.val_size=200"])
    data = load_dataset("digits", None)
    x_tr, _ = select_train(cfg, data)
    x_rest, _, _, _ = hold_out(cfg, data)
    assert torch.equal(x_tr, x_rest[:300])
    n_all = data.x_train.shape[0]
    with pytest.raises(ConfigError, match="left after regime.val_size"):
        select_train(compose_config(BASE + ["regime=full_batch", f"regime.n_samples={n_all - 100}",
                                            "regime.val_size=200"]), data)
    with pytest.raises(ConfigError, match="regime.val_size"):
        select_train(compose_config(BASE + [f"regime.val_size={n_all}"]), data)
    with pytest.raises(ConfigError, match="regime.val_size must be >= 0"):
        compose_config(BASE + ["regime.val_size=-1"])


def test_epoch_rows_log_val_loss_and_acc(results):
    cfg = compose_config(BASE + ["regime=mini_batch", "regime.batch_size=256", "regime.val_size=150",
                                 f"results_dir={results}", "optimizer=sgd", "optimizer.lr=0.1"])
    out = execute(cfg)
    assert out.status == "done"
    df = pd.read_parquet(out.path / "metrics.parquet")
    ep = df[df.split == "epoch"].sort_values("epoch")
    assert ep.val_loss.notna().all() and ep.val_acc.between(0, 1).all()
    # The init row's val loss is the initial model's loss on exactly the held-out images.
    td = prepare_data(cfg, torch.device("cpu"))
    model = build_model(cfg, td.data, torch.device("cpu"), torch.float32)
    want = evaluate(model, td.x_va, td.y_va, 10, "ce", 2048)
    assert ep.val_loss.iloc[0] == pytest.approx(want[0], rel=1e-6)
    assert ep.val_acc.iloc[0] == pytest.approx(want[1])
    # No hold-out: no val columns, and training uses every training image.
    cfg0 = compose_config(BASE + ["regime=mini_batch", "regime.batch_size=256", f"results_dir={results}"])
    assert prepare_data(cfg0, torch.device("cpu")).x_va is None
