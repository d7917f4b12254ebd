"""Config helpers shared by the entry points (OmegaConf only; Hydra stays in the entry points)."""

from __future__ import annotations

import copy
import difflib
import functools
import importlib
import inspect
import types
import typing
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from maskdet.errors import ConfigError

_SCALARS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}


def register_resolvers() -> None:
    """``${short_id:}``: a random 6-hex suffix, so run folders started in the same second never collide."""
    if not OmegaConf.has_resolver("short_id"):
        OmegaConf.register_new_resolver("short_id", lambda: uuid.uuid4().hex[:6], use_cache=True)


CONFIG_DIR = Path(__file__).resolve().parent / "conf"


def packaged_defaults(config_file: str) -> dict:
    """The values a packaged config file (``bias/default.yaml``, relative to ``maskdet/conf``) sets, unresolved:
    the one home of each default. Settings objects take their defaults from here, so that Python callers
    and the command line get the same values (a default written twice drifts apart). A fresh copy each time:
    a caller that changes it changes no one else's defaults."""
    return copy.deepcopy(_packaged(config_file))


@functools.cache
def _packaged(config_file: str) -> dict:
    loaded = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / config_file), resolve=False)
    return {k: v for k, v in loaded.items() if k != "defaults"}


def import_target(path: str):
    """The object at ``package.module.name`` (a config's ``_target_``, a backbone family's build function,
    a bias figure); ImportError or AttributeError when there is none."""
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise ImportError(f"{path!r} is not an import path (package.module.name)")
    module = importlib.import_module(module_name)
    return getattr(module, attr)


def _type_hints(target: Callable) -> dict:
    """The resolved annotations of ``target``'s parameters ({} where they cannot be evaluated)."""
    try:
        return typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    except Exception:  # noqa: BLE001 - annotations that do not evaluate are simply not checked
        return {}


def _allowed(annotation) -> tuple[set, set] | None:
    """(scalar types, literal values) an annotation accepts, or None when it takes anything richer
    (paths, lists, modules ...), which is then left to the target itself."""
    origin = typing.get_origin(annotation)
    if annotation in _SCALARS:
        return {annotation}, set()
    if origin is typing.Literal:
        return set(), set(typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        kinds, literals = set(), set()
        for arg in typing.get_args(annotation):
            part = _allowed(arg)
            if part is None:
                return None
            kinds |= part[0]
            literals |= part[1]
        return kinds, literals
    return None


def _fits(value, kinds: set, literals: set) -> bool:
    if isinstance(value, DictConfig | ListConfig | dict | list):
        return False
    if value in literals and type(value) in {type(v) for v in literals}:
        return True
    if isinstance(value, bool):
        return bool in kinds or (str in kinds and not literals)
    if isinstance(value, int):
        return bool(kinds & {int, float}) or str in kinds
    if isinstance(value, float):
        return float in kinds or str in kinds
    if value is None:
        return type(None) in kinds
    return str in kinds  # a string where a number is expected is refused


def _describe(kinds: set, literals: set) -> str:
    names = [_SCALARS[k] for k in (int, float, bool, str, type(None)) if k in kinds]
    names += sorted((repr(v) for v in literals), key=lambda r: (r.startswith("'"), len(r), r))
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def check_keys(cfg: DictConfig, where: str, target: Callable | None = None, skip: Iterable[str] = ()) -> None:
    """Refuse keys that the ``_target_`` of ``cfg`` (and of nested nodes) does not accept, naming the
    misspelt key and the closest valid ones, and plain values of the wrong type (``max_epochs=abc``),
    before anything is built. ``target`` checks a node without ``_target_`` against a function that
    receives it as keyword arguments (the bias audit, the explanations); ``skip`` names the parameters
    that the config does not give (the function's data)."""
    if not isinstance(cfg, DictConfig):
        return
    name = cfg.get("_target_")
    if name is not None:
        try:
            target = import_target(name)
            signature = inspect.signature(target)
        except (ImportError, AttributeError, ValueError):
            raise ConfigError(f"{where}._target_={name!r} cannot be imported.") from None
    elif target is not None:
        name = f"{target.__module__}.{target.__qualname__}"
        signature = inspect.signature(target)
    if target is not None:
        params = {k: p for k, p in signature.parameters.items() if k not in set(skip)}
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        accepted = [p for p, v in params.items() if v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD) and p != "self"]
        hints = _type_hints(target)
        for key in cfg:
            key = str(key)
            if key.startswith("_"):
                continue
            if key not in params and not takes_any:
                close = difflib.get_close_matches(key, accepted, n=3)
                hint = f" Did you mean {' or '.join(f'{where}.{c}' for c in close)}?" if close else ""
                raise ConfigError(f"Unknown config key {where}.{key}: {name} accepts {', '.join(accepted)}.{hint}")
            allowed = _allowed(hints[key]) if key in hints else None
            if allowed is None or OmegaConf.is_missing(cfg, key):
                continue
            try:
                value = cfg[key]
            except InterpolationResolutionError:
                continue  # e.g. ${hydra:...} outside a Hydra run: resolved and checked by the target later
            if not _fits(value, *allowed):
                raise ConfigError(f"{where}.{key}={value!r} is not accepted: {name} takes {key} as "
                                  f"{_describe(*allowed)}; set one with {where}.{key}=<value>.")
    for key in cfg:
        child = cfg._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            check_keys(cfg[key], f"{where}.{key}")
