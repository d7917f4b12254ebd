"""Config helpers shared by the entry points (OmegaConf only; Hydra stays in the entry points)."""

from __future__ import annotations

import difflib
import inspect
import uuid

from omegaconf import DictConfig, OmegaConf

from maskdet.errors import ConfigError


def register_resolvers() -> None:
    """``${short_id:}``: a random 6-hex suffix, so run folders started in the same second never collide."""
    if not OmegaConf.has_resolver("short_id"):
        OmegaConf.register_new_resolver("short_id", lambda: uuid.uuid4().hex[:6], use_cache=True)


def _import_target(path: str):
    module_name, _, attr = path.rpartition(".")
    module = __import__(module_name, fromlist=[attr])
    return getattr(module, attr)


def check_keys(cfg: DictConfig, where: str) -> None:
    """Refuse keys that the ``_target_`` of ``cfg`` (and of nested nodes) does not accept, naming the
    misspelt key and the closest valid ones, before anything is built."""
    if not isinstance(cfg, DictConfig):
        return
    target = cfg.get("_target_")
    if target is not None:
        try:
            signature = inspect.signature(_import_target(target))
        except (ImportError, AttributeError, ValueError):
            raise ConfigError(f"{where}._target_={target!r} cannot be imported.") from None
        params = signature.parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        for key in cfg:
            if str(key).startswith("_") or takes_any or key in params:
                continue
            close = difflib.get_close_matches(str(key), list(params), n=3)
            hint = f" Did you mean {' or '.join(f'{where}.{c}' for c in close)}?" if close else ""
            raise ConfigError(f"Unknown config key {where}.{key}: {target} accepts "
                              f"{', '.join(p for p in params if p not in ('self', 'args', 'kwargs'))}.{hint}")
    for key in cfg:
        child = cfg._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            check_keys(cfg[key], f"{where}.{key}")
