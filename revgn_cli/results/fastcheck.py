"""A quick, strict pre-check that a stored config fits the schema, so listing runs need not build an OmegaConf
structured config per run (≈90% of `revgn runs` on 50 runs when every run went through ``OmegaConf.merge``).

It is stricter than OmegaConf, never looser: a config it accepts would merge into the schema without error
(every key is a schema field, every value has the field's own type; an int where a float is declared, as
OmegaConf also allows). Whatever it does not accept goes to the exact OmegaConf check, which gives the message.
"""
from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any, Union


@functools.lru_cache(maxsize=1)
def _fields() -> dict[str, Any]:
    """Schema dataclass → {field name: its (resolved) type, or a nested dict for a nested dataclass}."""
    from revgn_cli.config import Config

    def walk(cls: type) -> dict[str, Any]:
        hints = typing.get_type_hints(cls)
        return {f.name: walk(hints[f.name]) if dataclasses.is_dataclass(hints[f.name]) else hints[f.name]
                for f in dataclasses.fields(cls)}

    return walk(Config)


def _value_fits(tp: Any, v: Any) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if origin is Union:  # Optional[X]
        return any(_value_fits(a, v) for a in args)
    if tp is type(None):
        return v is None
    if origin is list:
        return isinstance(v, list) and all(_value_fits(args[0] if args else Any, x) for x in v)
    if origin is dict:
        return isinstance(v, dict) and all(isinstance(k, str) for k in v)
    if tp is bool:
        return isinstance(v, bool)
    if tp is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if tp is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if tp is str:
        return isinstance(v, str)
    return False


def fits_schema(cfg: dict[str, Any], fields: dict[str, Any] | None = None) -> bool:
    """True when every key of ``cfg`` is a schema field holding a value of the field's type (recursively)."""
    fields = _fields() if fields is None else fields
    for k, v in cfg.items():
        if k not in fields:
            return False
        f = fields[k]
        if isinstance(f, dict):
            if not (isinstance(v, dict) and fits_schema(v, f)):
                return False
        elif not _value_fits(f, v):
            return False
    return True


def config_problem(cfg: dict[str, Any]) -> str | None:
    """Why a stored config does not fit the schema (unknown key, wrong type), or None."""
    if fits_schema(cfg):  # the common case, without building an OmegaConf node per run
        return None
    from omegaconf import OmegaConf

    from revgn_cli.config import Config

    try:
        OmegaConf.merge(OmegaConf.structured(Config), cfg)
    except Exception as e:  # omegaconf's validation errors
        key = getattr(e, "full_key", None)
        return f"config.yaml does not match the schema{f' at {key}' if key else ''}: {str(e).splitlines()[0]}"
    return None
