"""Nothing in a file chooses code.

A run folder, a checkpoint or a sweep may come from someone else (a paper's supplementary material, a
model hub). Its contents are read as *data*: a saved config node is never handed to Hydra's
``instantiate`` with a ``_target_`` it chose, and a name read from a file is never imported. Hydra's own
blocklist stops ``os.system`` but not a chain such as ``numpy.load(allow_pickle=true, file=...)``, whose
pickle runs anything; a checkpoint's ``architecture`` in its import-path form (``package.module.fn/name``)
would import and call ``fn``.

A name read from a file is accepted only when

* maskdet ships it: a ``_target_`` that one of maskdet's own config files uses, a backbone family
  registered with ``@family`` (the COMP6721 CNN, torchvision, timm); or
* the user names it on their own command line or in their own config folder: any ``_target_`` of the
  command's own composed config, or ``trusted_code=[package.module.name, ...]``.

Everything else is refused before anything is imported, with the message saying how to allow it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from pathlib import Path

import yaml

from maskdet.errors import ConfigError

CONF_DIR = Path(__file__).parent / "conf"
# Hydra's instantiate keys that carry no code of their own; any other underscore key is refused.
PLAIN_KEYS = {"_partial_", "_recursive_", "_convert_", "_args_"}


def _targets(node, where: str = ""):
    """(dotted key, value) of every ``_target_`` in a plain nested dict/list."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            here = f"{where}.{key}" if where else str(key)
            if key == "_target_":
                yield here, value
            else:
                yield from _targets(value, here)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _targets(value, f"{where}[{i}]")


@functools.cache
def shipped_targets() -> frozenset[str]:
    """Every ``_target_`` used by maskdet's own config files."""
    found = set()
    for path in CONF_DIR.rglob("*.yaml"):
        for _, value in _targets(yaml.safe_load(path.read_text()) or {}):
            if isinstance(value, str):
                found.add(value)
    return frozenset(found)


def trusted_names(command_config=None, trusted_code: Iterable[str] | None = ()) -> frozenset[str]:
    """What a file may name: maskdet's own targets, the command's own config's, and ``trusted_code``."""
    own = {str(v) for _, v in _targets(_plain(command_config))} if command_config is not None else set()
    return shipped_targets() | own | {str(t) for t in trusted_code or ()}


def _plain(node):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=False) if OmegaConf.is_config(node) else node


def check_saved_node(node, source: str | Path, trusted: frozenset[str], prefix: str = "data") -> None:
    """Refuse a config node read from ``source`` (a file someone else may have written) that names code
    maskdet does not ship and the user did not name: every ``_target_`` in it is checked before anything
    is imported or instantiated."""
    node = _plain(node)
    for key, value in _targets(node, prefix):
        if not isinstance(value, str) or value not in trusted:
            raise ConfigError(
                f"{source} names {value!r} as {key}: maskdet does not import or call code named by a file it "
                "did not just write (the file may come from someone else). Allow it only if you trust whoever "
                f"wrote {Path(str(source)).name}: add trusted_code=[{value}] to the command, or give the data "
                "yourself with data=<layout> data.root=<folder> (and data.splits_file=<run>/splits.csv to "
                "keep the run's split).")
    for key in _underscore_keys(node, prefix):
        raise ConfigError(f"{source} sets {key}, which is not a plain setting (Hydra instantiates by it): edit "
                          "the file to remove it, or give the data yourself with data=<layout> data.root=<folder>.")


def _underscore_keys(node, where: str):
    if isinstance(node, Mapping):
        for key, value in node.items():
            here = f"{where}.{key}"
            if str(key).startswith("_") and key != "_target_" and key not in PLAIN_KEYS:
                yield here
            yield from _underscore_keys(value, here)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _underscore_keys(value, f"{where}[{i}]")


def check_architecture(architecture: str, source: str | Path, trusted_code: Iterable[str] = ()) -> None:
    """A checkpoint's ``architecture``: a registered family (``timm/...``, a torchvision name alone) is data;
    an import path (``package.module.fn/name``) is code and must be named in ``trusted_code`` first."""
    from maskdet.models.backbones import FAMILIES

    if not isinstance(architecture, str) or not architecture:
        raise ConfigError(f"{source}: its architecture {architecture!r} is not a name; use a checkpoint written "
                          "by maskdet.train.")
    prefix, _, name = architecture.partition("/")
    if not name or prefix in FAMILIES or prefix in {str(t) for t in trusted_code or ()}:
        return
    raise ConfigError(
        f"{source} was trained with the backbone family {prefix!r} (architecture {architecture!r}), which is "
        f"neither shipped with maskdet ({', '.join(sorted(FAMILIES))}) nor named by you: maskdet does not import "
        "code named by a checkpoint it did not just write. If you trust whoever made the checkpoint and have "
        f"their package installed, add trusted_code=[{prefix}] to the command.")
