"""Config composition: presets, overrides, validation, run ids."""
import math

import pytest
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from revgn_cli.config import ConfigError, compose_config, run_id


def test_defaults_compose():
    cfg = compose_config([])
    assert cfg.dataset.name == "mnist5k" and cfg.optimizer.name == "gn" and cfg.regime.name == "full_batch"
    assert cfg.regularizer.name == "truncation" and cfg.regularizer.rtol == 1e-2 and cfg.regularizer.atol == 1e-5
    assert cfg.model.hidden == 1024 and cfg.model.init_std == 1e-3


@pytest.mark.parametrize("group,name,lr", [("optimizer", "adam", 1e-4), ("optimizer", "sgd", 0.1), ("optimizer", "gn", 0.5)])
def test_optimizer_presets(group, name, lr):
    cfg = compose_config([f"{group}={name}"])
    assert cfg.optimizer.name == name and math.isclose(cfg.optimizer.lr, lr)


def test_no_bottleneck_and_null():
    assert compose_config(["model.hidden=null"]).model.hidden is None
    assert compose_config(["model=no_bottleneck"]).model.hidden is None


@pytest.mark.parametrize("bad,exc", [
    (["optimizer.lrr=1"], HydraException),          # unknown key
    (["optimizer.lr=abc"], (HydraException, OmegaConfBaseException)),  # wrong type
    (["optimizer=nope"], HydraException),           # unknown group option
    (["nogroup=x"], HydraException),                # unknown group
    (["optimizer.lr=nan"], ConfigError),
    (["model.n_blocks=0"], ConfigError),
    (["regime.batch_size=-4"], ConfigError),
    (["regularizer.name=magic"], ConfigError),
    (["train.switch_epoch=5"], ConfigError),        # switch without a target
])
def test_bad_overrides_raise(bad, exc):
    with pytest.raises(exc):
        compose_config(bad)


def test_run_id_stable_and_sensitive():
    a = run_id(compose_config(["optimizer.lr=0.1"]))
    assert a == run_id(compose_config(["optimizer.lr=0.1"]))
    assert a != run_id(compose_config(["optimizer.lr=0.2"]))
    # where output goes does not change the identity of a run
    assert a == run_id(compose_config(["optimizer.lr=0.1", "results_dir=/tmp/elsewhere", "device=cpu"]))


def test_noise_runs_get_new_ids_other_regularisers_keep_theirs():
    """The noise regulariser changed its form (noise on the target, not on Σ⁺): its runs must not reuse the ids
    that results of the old form were stored under (pinned here, from before the change); others are unaffected."""
    noise = compose_config(["regularizer=noise"])
    assert run_id(noise) != "fa423cad79ff"
    assert run_id(noise) == run_id(compose_config(["regularizer=noise"]))
    assert run_id(noise) != run_id(compose_config(["regularizer=noise", "regularizer.noise=0.2"]))
    assert run_id(compose_config(["regularizer=truncation"])) == run_id(compose_config([]))


def test_optimizer_solver_key():
    """optimizer.solver: auto (default, hashed as absent so ids made before the key existed stay valid) | eigh (its
    own id); any other value is refused with one line naming the key."""
    from revgn_cli.config import validate

    base = compose_config([])
    assert base.optimizer.solver == "auto"
    assert run_id(base) == run_id(compose_config(["optimizer.solver=auto"]))
    assert run_id(base) != run_id(compose_config(["optimizer.solver=eigh"]))
    with pytest.raises(ConfigError, match="optimizer.solver"):
        validate(compose_config(["optimizer.solver=lu"]))


def test_composition_is_reused_as_a_fresh_copy_and_redone_when_conf_changes(tmp_path, monkeypatch):
    """compose_node caches per conf/ state: each call gets its own copy, and an edited preset is read again."""
    import shutil

    from omegaconf import OmegaConf

    from revgn_cli.config import compose_node, conf_dir

    conf = tmp_path / "conf"
    shutil.copytree(conf_dir(), conf)
    monkeypatch.setenv("REVGN_CONF", str(conf))
    a = compose_node(["optimizer=gn"])
    b = compose_node(["optimizer=gn"])
    assert a is not b and OmegaConf.to_container(a) == OmegaConf.to_container(b)
    a.optimizer.lr = 123.0  # a caller's change stays its own
    assert compose_node(["optimizer=gn"]).optimizer.lr == b.optimizer.lr != 123.0
    gn = conf / "optimizer" / "gn.yaml"
    text = gn.read_text()
    assert "lr:" in text
    gn.write_text("\n".join("lr: 0.777" if ln.startswith("lr:") else ln for ln in text.splitlines()) + "\n")
    assert compose_node(["optimizer=gn"]).optimizer.lr == 0.777
    assert compose_config(["optimizer=gn"]).optimizer.lr == 0.777
