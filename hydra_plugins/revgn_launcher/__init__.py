"""revgn's Hydra launcher: hydra-submitit-launcher's SLURM launcher, waiting for every job's final state.

Hydra instantiates launchers only from the ``hydra_plugins`` namespace package; the logic is in
revgn_cli.cluster.launcher. Used by conf/hydra/launcher/slurm*.yaml and, for ``submitit_slurm``, by ``revgn sweep``.
"""
from revgn_cli.cluster.launcher import WaitingSlurmLauncher


class SlurmLauncher(WaitingSlurmLauncher):
    """What ``_target_: hydra_plugins.revgn_launcher.SlurmLauncher`` names."""
