"""The launcher a study or the tuner adds to the user's overrides (revgn_cli.overrides.default_launcher)."""
from revgn_cli.overrides import default_launcher


def test_the_default_launcher_is_joblib_with_two_workers_and_the_users_launcher_overrides_win():
    assert default_launcher([]) == ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    assert default_launcher(["train.epochs=2"], n_jobs=4) == ["hydra/launcher=joblib", "hydra.launcher.n_jobs=4"]
    assert default_launcher([], n_jobs=1) == []  # Hydra's basic launcher: one run at a time already
    # a launcher the user chooses is kept whole
    assert default_launcher(["hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=60"]) == []
    assert default_launcher(["++hydra/launcher=joblib"]) == []
    # a setting given alone applies to the joblib launcher, in place of the default's (not overridden by n_jobs=2)
    assert default_launcher(["hydra.launcher.n_jobs=1"]) == ["hydra/launcher=joblib"]
    assert default_launcher(["++hydra.launcher.n_jobs=3"], n_jobs=1) == ["hydra/launcher=joblib"]
    assert default_launcher(["hydra.launcher.verbose=1"]) == ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
