"""RevMLP (docs/design.md): exact inverse, parameter layout, the linear-in-θ structure GN relies on."""
from __future__ import annotations

import pytest
import torch

from revgn_cli.models import RevMLP


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(d, L, h, linear=True, seed=0, std=0.3):
    return RevMLP(d, L, h, n_classes=min(10, d), init_std=std, first_block_linear=linear, seed=seed).double()


@pytest.mark.parametrize("seed", range(6))
def test_inverse_float64_random_shapes(seed):
    """inverse(features(x)) == x to 1e-12 in float64 for random d, L, h, both block types, hidden=None."""
    g = torch.Generator().manual_seed(seed)
    d = 2 * int(torch.randint(1, 40, (1,), generator=g))
    L = int(torch.randint(1, 5, (1,), generator=g))
    h = [None, int(torch.randint(1, 300, (1,), generator=g))][seed % 2]
    for linear in (True, False):
        # weights of std 1/√fan: every half-layer is an O(1) map, so the blocks change x by O(1)
        m = _model(d, L, h, linear=linear, seed=seed, std=(h or d // 2) ** -0.5)
        x = torch.randn(17, d, generator=g, dtype=torch.float64)
        xl = m.features(x)
        assert (xl - x).abs().max() > 0.1  # the blocks do something
        err = (m.inverse(xl) - x).abs().max().item()
        assert err < 1e-12 * max(1.0, xl.abs().max().item()), (d, L, h, linear, err)


def test_block_outputs_and_logits_consistent():
    m = _model(10, 3, 20)
    x = torch.randn(5, 10, dtype=torch.float64)
    outs = m.block_outputs(x)
    assert len(outs) == 3 and torch.equal(outs[-1], m.features(x))
    assert torch.allclose(m(x), m.features(x) @ m.readout)


def test_parameter_layout_and_count():
    """trainable() = [F.weight, F.bias, G.weight, G.bias] per block: 2 half-layers × L × (h·d/2 + d/2) numbers.

    (4·L·(h·d/2 + d/2) would count twice that; the paper's sizes — 12.5M for MNIST, 147.5M for CIFAR-10 — are
    L·d·(h+1), which is what the model has: docs/design.md.)
    """
    d, L, h = 12, 3, 7
    m = RevMLP(d, L, h)
    ps = m.trainable()
    assert len(ps) == 4 * L
    assert [tuple(p.shape) for p in ps[:4]] == [(d // 2, h), (d // 2,), (d // 2, h), (d // 2,)]
    assert m.n_trainable() == L * d * (h + 1) == 2 * L * (h * d // 2 + d // 2)
    assert abs(2 * (784 * 8001) - 12.5e6) < 0.1e6 and abs(6 * 3072 * 8001 - 147.5e6) < 0.1e6  # paper sizes
    m0 = RevMLP(d, 2, None)
    assert tuple(m0.trainable()[0].shape) == (d // 2, d // 2)
    # fixed tensors are buffers, not parameters
    trained = {id(p) for p in ps}
    assert all(id(p) in trained for p in m.parameters())
    assert m.blocks[0].F.expand.shape == (d // 2, h) and not m.blocks[0].F.expand.requires_grad


def test_readout_orthonormal_and_init():
    m = RevMLP(64, 2, 128, n_classes=10, init_std=1e-3, seed=3)
    u = m.readout.double()
    assert torch.allclose(u.T @ u, torch.eye(10, dtype=torch.float64), atol=1e-6)
    w = torch.cat([m.blocks[1].F.weight.flatten(), m.blocks[1].G.weight.flatten()])
    assert abs(w.std().item() - 1e-3) < 1e-4
    assert all((hl.bias == 0).all() for hl in m.half_layers())
    same = RevMLP(64, 2, 128, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), same.state_dict().values()))


def test_half_layer_is_linear_in_its_parameters():
    """F(z) = Σ(z) W̃ with Σ = [σ(zC), 1]: the structure that makes GN tractable (docs/design.md)."""
    m = _model(8, 2, 16, linear=True)
    z = torch.randn(5, 4, dtype=torch.float64)
    for hl, linear in ((m.blocks[0].F, True), (m.blocks[1].G, False)):
        assert hl.linear is linear
        sig = torch.cat([hl.sigma(z), torch.ones(5, 1, dtype=torch.float64)], 1)
        wt = torch.cat([hl.weight.T, hl.bias[None]], 0)
        assert torch.allclose(hl(z), sig @ wt, atol=1e-12)
    # first block linear: F(a z) - b = a (F(z) - b); ReLU blocks are not linear in z
    f = m.blocks[0].F
    assert torch.allclose(f(-2 * z) - f.bias, -2 * (f(z) - f.bias), atol=1e-12)
    g = m.blocks[1].F
    assert not torch.allclose(g(-2 * z) - g.bias, -2 * (g(z) - g.bias), atol=1e-6)


def test_rejects_bad_shapes():
    with pytest.raises(ValueError):
        RevMLP(7, 2, 8)
    with pytest.raises(ValueError):
        RevMLP(8, 0, 8)


def test_linear_map_memo_follows_every_weight_change():
    """C Wᵀ is formed once per set of weights in no-grad use, and never served stale: an in-place update, an
    optimiser step, load_state_dict and a dtype move all give the new product; a graph-recording forward
    differentiates through it."""
    m = _model(8, 1, 64)  # one block, linear: both half-layers use the memo
    hl = m.blocks[0].F

    def fresh() -> torch.Tensor:
        return hl.expand @ hl.weight.T

    with torch.no_grad():
        first = hl.linear_map()
        assert hl.linear_map() is first and torch.equal(first, fresh())
        hl.weight.mul_(2.0)  # in place: version bump
        assert torch.equal(hl.linear_map(), fresh()) and not torch.equal(hl.linear_map(), first)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    x = torch.randn(70, 8, dtype=torch.float64)  # n = 70: forward takes the z (C Wᵀ) order
    m(x).square().sum().backward()  # grad mode: the product is differentiated, not memoised
    assert hl.weight.grad is not None and hl.weight.grad.abs().sum() > 0
    before = m(x).detach()
    opt.step()
    with torch.no_grad():
        assert torch.equal(hl.linear_map(), fresh())
        assert not torch.allclose(m(x), before)
        m.load_state_dict(state)
        assert torch.equal(hl.linear_map(), fresh())
        torch.testing.assert_close(m(x), m.features(x) @ m.readout, rtol=0, atol=0)
        m.float()
        assert hl.linear_map().dtype == torch.float32 and torch.equal(hl.linear_map(), fresh())
    with torch.inference_mode():
        m(x.float())
    xg = x.float().requires_grad_()
    m.requires_grad_(False)
    with torch.no_grad():
        m(xg)  # memoised outside inference mode: usable in a graph below
    m(xg).sum().backward()  # the graph saves the (memoised) C Wᵀ for the input gradient
    assert xg.grad is not None and xg.grad.abs().sum() > 0


def test_forward_mode_ad_sees_the_weights_of_a_memoised_linear_block():
    """A weight carrying a forward-mode tangent (torch.autograd.forward_ad, as torch.func.linearize traces) must not
    get the memoised C Wᵀ, which has no tangent: the JVP would lose the block's weight direction."""
    import torch.autograd.forward_ad as fwad

    m = _model(8, 1, 64)
    x = torch.randn(70, 8, dtype=torch.float64)  # n = 70: forward takes the z (C Wᵀ) order
    with torch.no_grad():
        m(x)  # the memo is filled
    names = dict(m.named_parameters())
    tangents = {k: torch.randn_like(p) for k, p in names.items()}
    want = torch.func.jvp(lambda p: torch.func.functional_call(m, p, (x,)), ({k: p.detach() for k, p in names.items()},),
                          (tangents,))[1]
    with fwad.dual_level():
        duals = {k: fwad.make_dual(p.detach(), tangents[k]) for k, p in names.items()}
        got = fwad.unpack_dual(torch.func.functional_call(m, duals, (x,))).tangent
    assert got is not None and got.abs().sum() > 0
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_stamp_sees_in_place_updates_and_new_storage():
    from revgn_cli.models.stamp import Stamp

    a, b = torch.randn(4), torch.nn.Parameter(torch.randn(3))
    s = Stamp((a, b))
    assert s.matches((a, b)) and not s.matches((b, a))
    a.add_(0.0)  # same values, new version
    assert not s.matches((a, b))
    s = Stamp((a, b))
    old = b.data
    b.data = old.clone()  # new storage, same values; the stamp pins the old one, so no address reuse
    assert not s.matches((a, b))
    s = Stamp((a, b))
    with torch.no_grad():
        b.copy_(torch.zeros(3))  # what load_state_dict does
    assert not s.matches((a, b))
