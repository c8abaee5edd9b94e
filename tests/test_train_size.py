"""regime.train_size: a seeded, stratified, prefix-stable subset of the training images (the data-size axis)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from revgn_cli.config import ConfigError, compose_config, run_id
from revgn_cli.data import load_dataset
from revgn_cli.data.split import nested_stratified_order
from revgn_cli.train.loop import hold_out, prepare_data, select_train
from revgn_cli.train.runner import execute

BASE = ["dataset=digits", "model=tiny", "device=cpu", "train.epochs=1", "metrics.every=0", "regime=mini_batch",
        "regime.batch_size=32"]


def _keys(x: torch.Tensor) -> list[bytes]:
    return [r.numpy().tobytes() for r in x]


def test_every_prefix_of_the_order_is_stratified_and_nested():
    y = np.random.RandomState(3).choice(4, 500, p=[0.1, 0.2, 0.3, 0.4])
    order = nested_stratified_order(y, seed=5)
    assert sorted(order.tolist()) == list(range(500))  # a permutation: nested prefixes by construction
    counts = np.bincount(y, minlength=4)
    for n in range(1, 501):
        got = np.bincount(y[order[:n]], minlength=4)
        assert np.abs(got - n * counts / 500).max() < 1 + 1e-9, n
    assert np.array_equal(order, nested_stratified_order(y, seed=5))
    assert not np.array_equal(order, nested_stratified_order(y, seed=6))


def test_train_size_selects_nested_subsets_after_the_hold_out():
    data = load_dataset("digits", None)
    small = compose_config(BASE + ["regime.train_size=100", "regime.val_size=200"])
    big = compose_config(BASE + ["regime.train_size=300", "regime.val_size=200"])
    xs, ys = select_train(small, data)
    xb, _ = select_train(big, data)
    assert xs.shape[0] == 100 and xb.shape[0] == 300
    assert set(_keys(xs)) <= set(_keys(xb))  # the smaller size is part of the larger
    x_rest, _, x_val, _ = hold_out(small, data)
    assert not set(_keys(xs)) & set(_keys(x_val))  # never a validation image
    pos = {k: i for i, k in enumerate(_keys(x_rest))}
    idx = [pos[k] for k in _keys(xs)]
    assert idx == sorted(idx)  # kept in the training order
    share = torch.bincount(data.y_train, minlength=10).double() / data.y_train.shape[0]
    assert (torch.bincount(ys, minlength=10).double() - 100 * share).abs().max() < 2  # stratified (±1 of the rest)
    td = prepare_data(small, torch.device("cpu"))
    assert torch.equal(td.x_te, data.x_test)  # the test set is fixed
    n_rest = x_rest.shape[0]
    with pytest.raises(ConfigError, match="regime.train_size=.* exceeds"):
        select_train(compose_config(BASE + [f"regime.train_size={n_rest + 1}", "regime.val_size=200"]), data)
    with pytest.raises(ConfigError, match="regime.train_size must be >= 1"):
        compose_config(BASE + ["regime.train_size=0"])


def test_a_run_trains_on_train_size_images(results):
    cfg = compose_config(BASE + ["regime.train_size=100", f"results_dir={results}", "optimizer=sgd",
                                 "optimizer.lr=0.1"])
    out = execute(cfg)
    assert out.status == "done"
    df = pd.read_parquet(out.path / "metrics.parquet")
    steps = df[df.split == "step"]
    assert len(steps) == math.ceil(100 / 32)  # one epoch of batches drawn from 100 images, not the whole set
    # the whole set gives more updates per epoch
    assert math.ceil(load_dataset("digits", None).x_train.shape[0] / 32) > len(steps)


def test_train_size_null_keeps_run_ids():
    a = compose_config(BASE)
    assert run_id(a) == run_id(compose_config(BASE + ["regime.train_size=null"]))
    assert run_id(a) != run_id(compose_config(BASE + ["regime.train_size=100"]))
