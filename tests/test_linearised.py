"""Iterative linearisation (revgn_cli/optim/linearised.py): first-order exactness, the gradient it follows, K = 1
equals ordinary training bit-for-bit, K bookkeeping, and a bit-for-bit state_dict round trip."""
from __future__ import annotations

import copy
import io

import pytest
import torch
from torch.func import functional_call, jacrev

from revgn_cli.models import RevMLP
from revgn_cli.optim import LinearisedStepper, batch_loss, make_optimizer


def _net(dtype=torch.float64, init_std=0.3, seed=0):
    # Large weights and ReLU in every block: a clearly non-linear map, so the Taylor remainder is visible.
    return RevMLP(16, 2, 24, n_classes=4, init_std=init_std, first_block_linear=False, seed=seed).to(dtype)


def _batches(n_steps, n=32, d=16, c=4, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_steps):
        x = torch.randn(n, d, generator=g, dtype=dtype)
        y = torch.randint(0, c, (n,), generator=g)
        out.append((x, torch.nn.functional.one_hot(y, c).to(dtype)))
    return out


def _set(model, params):
    with torch.no_grad():
        for p, q in zip(model.parameters(), params):
            p.copy_(q)


def test_tangent_model_is_first_order_accurate():
    model = _net()
    stepper = LinearisedStepper(model, "sgd", lr=0.1)  # anchor θ_s = the current parameters
    theta_s = [p.detach().clone() for p in model.parameters()]
    g = torch.Generator().manual_seed(3)
    v = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in theta_s]
    x = torch.randn(20, 16, generator=g, dtype=torch.float64)
    with torch.no_grad():
        f_s = model(x)
    errs = []
    # Steps small enough that no ReLU changes side on these inputs (a kink crossing adds an O(ε·distance) term
    # that makes the ratio noisy at ε ≳ 1e-3 for this net); float64 keeps the ~1e-9 remainders exact enough.
    for eps in (1e-4, 5e-5, 2.5e-5):
        _set(model, [a + eps * b for a, b in zip(theta_s, v)])
        with torch.no_grad():
            f = model(x)
        f_lin = stepper.eval_model()(x)
        errs.append(float((f - f_lin).norm()))
        assert errs[-1] < 0.2 * float((f - f_s).norm())  # the remainder is small next to the first-order change
    # Halving ‖Δθ‖ shrinks ‖f − f_lin‖ by ~4: the remainder is O(‖Δθ‖²).
    for a, b in zip(errs, errs[1:]):
        assert 3.8 < a / b < 4.2, errs
    _set(model, theta_s)
    assert torch.equal(stepper.linearised_logits(x), model(x).detach())  # at θ = θ_s it is the network


def test_step_follows_the_gradient_of_the_linearised_loss():
    model = _net()
    stepper = LinearisedStepper(model, "sgd", lr=1.0, relinearise_every=None)
    (x0, t0), (x, t) = _batches(2)
    stepper.step(x0, t0)  # move away from the anchor: the next step takes the jvp path
    theta = [p.detach().clone() for p in model.parameters()]
    anchor = [a.clone() for a in stepper.anchor]
    names = [n for n, _ in model.named_parameters()]
    bufs = dict(model.named_buffers())
    # Reference with the explicit Jacobian at θ_s: ∇ = J(θ_s)ᵀ ∇_z ℓ(f(θ_s) + J(θ_s)(θ − θ_s)).
    f = lambda p: functional_call(model, (dict(zip(names, p)), bufs), (x,))  # noqa: E731
    J = jacrev(f)(tuple(anchor))
    z0 = f(tuple(anchor)).detach()
    z = z0 + sum((j.reshape(*z0.shape, -1) @ (a - b).reshape(-1)) for j, a, b in zip(J, theta, anchor))
    z = z.detach().requires_grad_(True)
    loss_ref = batch_loss(z, t)
    (gz,) = torch.autograd.grad(loss_ref, z)
    grad_ref = [torch.einsum("nc,nc...->...", gz, j) for j in J]
    loss = stepper.step(x, t)
    assert loss == pytest.approx(float(loss_ref.detach()), rel=1e-12)
    for th, p, gr in zip(theta, model.parameters(), grad_ref):
        torch.testing.assert_close(th - p.detach(), gr, rtol=1e-9, atol=1e-12)  # lr = 1, plain SGD


def test_jvp_path_at_the_anchor_matches_backprop():
    model = _net(torch.float32, init_std=1e-2)
    ref = copy.deepcopy(model)
    stepper = LinearisedStepper(model, "sgd", lr=0.5)
    stepper.since = 1  # pretend we are mid-cycle: the jvp path runs although θ = θ_s
    plain = make_optimizer(ref, {"name": "sgd", "lr": 0.5})
    (x, t), = _batches(1, dtype=torch.float32)
    assert stepper.step(x, t) == pytest.approx(plain.step(x, t), rel=1e-6)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("inner,lr", [("sgd", 0.3), ("adam", 1e-2)])
def test_k1_reproduces_plain_training_bit_for_bit(inner, lr):
    torch.manual_seed(0)
    model = _net(torch.float32, init_std=1e-2)
    ref = copy.deepcopy(model)
    lin = make_optimizer(model, {"name": "linearised", "inner": inner, "lr": lr, "relinearise_every": 1})
    plain = make_optimizer(ref, {"name": inner, "lr": lr})
    for x, t in _batches(6, dtype=torch.float32):
        assert lin.step(x, t) == plain.step(x, t)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), ref.parameters()))
    assert lin.stats["feature_updates"] == 6


def test_relinearisation_counters():
    model = _net(torch.float32, init_std=1e-2)
    never = LinearisedStepper(model, "sgd", lr=0.1, relinearise_every=None)
    a0 = [a.clone() for a in never.anchor]
    for x, t in _batches(5, dtype=torch.float32):
        never.step(x, t)
    assert never.stats == {"feature_updates": 0.0}
    assert all(torch.equal(a, b) for a, b in zip(a0, never.anchor))
    k3 = LinearisedStepper(_net(torch.float32, init_std=1e-2), "sgd", lr=0.1, relinearise_every=3)
    for x, t in _batches(7, dtype=torch.float32):
        k3.step(x, t)
    assert (k3.feature_updates, k3.since, k3.steps) == (2, 1, 7)
    with pytest.raises(ValueError):
        LinearisedStepper(model, "sgd", relinearise_every=0)
    with pytest.raises(ValueError):
        LinearisedStepper(model, "rmsprop")


def test_resumed_stepper_continues_bit_for_bit():
    batches = _batches(7, dtype=torch.float32)
    spec = {"name": "linearised", "inner": "adam", "lr": 1e-2, "relinearise_every": 3}
    full_model = _net(torch.float32, init_std=1e-2)
    full = make_optimizer(full_model, spec)
    full_losses = [full.step(x, t) for x, t in batches]

    model = _net(torch.float32, init_std=1e-2)
    first = make_optimizer(model, spec)
    losses = [first.step(x, t) for x, t in batches[:4]]  # stop mid-cycle (θ ≠ θ_s)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": first.state_dict()}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=False)
    model2 = _net(torch.float32, init_std=1e-2, seed=7)  # different init: everything must come from the checkpoint
    model2.load_state_dict(ck["model"])
    resumed = make_optimizer(model2, spec)
    resumed.load_state_dict(ck["optimizer"])
    losses += [resumed.step(x, t) for x, t in batches[4:]]
    assert losses == full_losses
    assert all(torch.equal(p, q) for p, q in zip(model2.parameters(), full_model.parameters()))
    assert resumed.stats == full.stats
