"""The paper's figures: name → caption, the presets it reads per scale, its plot function.

Figures that show the same runs read the same preset (``minibatch_quick`` feeds figures 2, 3, 4, 9, 10, 11, 15
and the baselines of 13 and 14), so ``revgn reproduce`` trains every run once. The studies' figures live in
``revgn_cli.studies.figures``; ``revgn_cli.figures.catalog`` looks a name up in both lists.
"""
from __future__ import annotations

from typing import Iterable

from revgn_cli.figures import plots
from revgn_cli.figures.spec import FigureSpec

MB_Q = ("minibatch_quick",)
MB_P = ("minibatch_paper_mnist", "minibatch_paper_cifar")

FIGURES: dict[str, FigureSpec] = {f.name: f for f in [
    FigureSpec(
        "fig1", "Full batch: train loss and accuracy",
        "Full-batch training (the first 1,024 training samples) of GN, Adam and SGD: train loss and train accuracy vs "
        "epoch. Paper: GN drives the train loss down far faster than Adam and SGD.",
        {"quick": ("fig1_quick",), "paper": ("fig1_paper_mnist", "fig1_paper_cifar")}, plots.plot_fig1, main=True),
    FigureSpec(
        "fig2", "Mini-batch: train loss, test loss, test accuracy",
        "Mini-batch training (paper: batch 1024): train loss, test loss and test accuracy vs epoch. Paper: GN's progress "
        "saturates quickly, even on the training loss; Adam ends with lower train and test loss.",
        {"quick": MB_Q, "paper": MB_P}, plots.plot_fig2, main=True),
    FigureSpec(
        "fig3", "Loss change on the batch just used",
        "Percentage change of the loss on the mini-batch used by each update, 100·(ℓ_after − ℓ_before)/ℓ_before, vs "
        "epoch. Paper: GN's updates cut the loss of their own batch far more than Adam's or SGD's — GN overfits "
        "each mini-batch.",
        {"quick": MB_Q, "paper": MB_P}, plots.plot_fig3, main=True),
    FigureSpec(
        "fig4", "NTK and CKA during training",
        "(a) NTK velocity and (b) NTK similarity to init of the paper's feature-space sketch cos(K_0 ū, K_t ū) "
        "(NTK of X_L before the read-out, 1,024 probe images), (c) revgn's own full logit-NTK similarity on 100 "
        "samples (a different quantity), (d–f) linear CKA of the first, middle and last block's output to init, "
        "mini-batch. Paper (CIFAR-10): under GN the "
        "NTK and the representations stay close to init (lazy regime); Adam and SGD move away.",
        {"quick": MB_Q, "paper": ("minibatch_paper_cifar",)}, plots.plot_fig4, main=True),
    FigureSpec(
        "fig5", "No-bottleneck RevMLP",
        "RevMLP without the inverted bottleneck (model.hidden = null): full-batch train loss (left), mini-batch train "
        "and test loss (centre, right). Paper (CIFAR-10): the same picture as with the bottleneck.",
        {"quick": ("fig5_quick",), "paper": ("fig5_paper",)}, plots.plot_fig5),
    FigureSpec(
        "fig6", "Long training",
        "Mini-batch training for 10× longer (paper: 1000 epochs on CIFAR-10): GN's train loss plateaus while Adam and "
        "SGD keep improving.",
        {"quick": ("fig6_quick",), "paper": ("fig6_paper",)}, plots.plot_fig6),
    FigureSpec(
        "fig7", "Optimiser switch half-way",
        "One run per direction switching optimiser half-way (dashed line): Adam → GN and GN → Adam; epochs keep "
        "counting across the switch. Paper: switching to GN stalls progress; switching from GN to Adam resumes it.",
        {"quick": ("fig7_quick",), "paper": ("fig7_paper",)}, plots.plot_fig7),
    FigureSpec(
        "fig8", "GN from different init scales",
        "GN (mini-batch) with trained weights initialised with standard deviation 1e-2, 1e-3, 1e-6: train and test "
        "loss. Paper: the init scale does not rescue GN's generalisation.",
        {"quick": ("fig8_quick",), "paper": ("fig8_paper",)}, plots.plot_fig8),
    FigureSpec(
        "fig9", "Weights stay at their init",
        "Cosine similarity between each half-layer's W at init and at the end of mini-batch training, per optimiser "
        "(bars: mean ± std over seeds). Paper: GN's weights stay closest to their initial values.",
        {"quick": MB_Q, "paper": MB_P}, plots.plot_fig9),
    FigureSpec(
        "fig10", "CKA to init, every block",
        "Linear CKA to init of the state after every half-coupling (F_k, then G_k, whose state is block k's output; "
        "the official code's per-half-layer CKA), or of every block's output for runs that log only those, "
        "mini-batch (paper: CIFAR-10). Paper: GN's representations barely change in any block.",
        {"quick": MB_Q, "paper": ("minibatch_paper_cifar",)}, plots.plot_fig10),
    FigureSpec(
        "fig11", "CKA to init, second setting",
        "As fig10 on the second dataset (paper: MNIST). At quick scale it shows the same mnist5k runs as fig10.",
        {"quick": MB_Q, "paper": ("minibatch_paper_mnist",)}, plots.plot_fig11),
    FigureSpec(
        "fig12", "GN with smaller learning rates",
        "GN (mini-batch) with lr 1e-1, 1e-3, 1e-4: train loss, test loss, test accuracy. Paper (CIFAR-10): a smaller "
        "lr slows GN down but does not make it generalise.",
        {"quick": ("fig12_quick",), "paper": ("fig12_paper",)}, plots.plot_fig12),
    FigureSpec(
        "fig13", "GN + weight decay",
        "GN, GN + weight decay (λ = 1e-4) and Adam, mini-batch: train loss, test loss, test accuracy. Paper "
        "(CIFAR-10): weight decay does not close the gap to Adam.",
        {"quick": MB_Q + ("fig13_quick",), "paper": ("minibatch_paper_cifar", "fig13_paper")}, plots.plot_fig13),
    FigureSpec(
        "fig14", "GN with a regularised pseudoinverse",
        "GN with a truncated (the paper's default), damped and noisy pseudoinverse vs Adam, mini-batch: train loss, "
        "test loss, test accuracy. Paper (CIFAR-10): none of them makes GN generalise like Adam.",
        {"quick": MB_Q + ("fig14_quick",), "paper": ("minibatch_paper_cifar", "fig14_paper")}, plots.plot_fig14),
    FigureSpec(
        "fig15", "Mini-batch, all metrics",
        "Appendix version of fig2: train loss, train accuracy, test loss and test accuracy vs epoch on both datasets.",
        {"quick": MB_Q, "paper": MB_P}, plots.plot_fig15),
]}

MAIN = tuple(n for n, f in FIGURES.items() if f.main)


def presets_of(specs: Iterable[FigureSpec], scale: str) -> list[str]:
    out: list[str] = []
    for s in specs:
        for p in s.presets_for(scale):
            if p not in out:
                out.append(p)
    return out
