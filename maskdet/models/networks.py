"""Networks by name: the seed's custom CNN or any torchvision classification model.

The head (the last ``nn.Linear``, found the same way for every architecture, as timm's
``reset_classifier`` does) is replaced to output the dataset's number of classes. Weights are ``None``,
a torchvision weights name (``IMAGENET1K_V1``, ``DEFAULT``), or a local state-dict file.
"""

from __future__ import annotations

import difflib
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from maskdet.errors import ConfigError, WeightsUnavailableError
from maskdet.models.custom_cnn import FaceMaskCNN

DOWNLOAD_TIMEOUT_S = 30  # an unreachable server must stop the run, not hang it
FREEZE_MODES = ("none", "backbone")


def head_name(net: nn.Module) -> str:
    """Qualified name of the classification head: the last ``nn.Linear`` in the module tree."""
    linears = [name for name, module in net.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ConfigError(f"{type(net).__name__} has no nn.Linear layer to use as the classification head.")
    return linears[-1]


def _replace_head(net: nn.Module, num_classes: int) -> str:
    name = head_name(net)
    old = net.get_submodule(name)
    parent_name, _, child = name.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    setattr(parent, child, nn.Linear(old.in_features, num_classes))
    return name


def _pretrained_state_dict(architecture: str, weights: str) -> dict:
    try:
        weights_enum = torchvision.models.get_model_weights(architecture)
        chosen = weights_enum[weights] if weights != "DEFAULT" else weights_enum.DEFAULT
    except KeyError:
        names = [w.name for w in torchvision.models.get_model_weights(architecture)]
        raise ConfigError(f"model.weights={weights!r} is not a weights name of {architecture}: "
                          f"use one of {names}, null, or a path to a state-dict file.") from None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(chosen.url).path).name
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        return chosen.get_state_dict(progress=False, check_hash=False)
    except Exception as err:  # URLError, timeouts, refused connections, HTTP errors: all mean "not available"
        raise WeightsUnavailableError(
            f"Downloading the {architecture} {chosen.name} weights from {chosen.url} failed ({err}). "
            f"If this machine is offline, fetch that file elsewhere and either place it at {cached} "
            f"(the torch hub cache, see $TORCH_HOME) or pass model.weights=<path to the .pth file>; "
            f"model.weights=null trains from random initialisation."
        ) from None
    finally:
        socket.setdefaulttimeout(previous)


def _load_local(net: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise ConfigError(f"model.weights={path} does not exist: pass a torchvision weights name, null, or a state-dict file.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:  # a Lightning checkpoint of maskdet
        state = {k.removeprefix("net."): v for k, v in state["state_dict"].items() if k.startswith("net.")}
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise ConfigError(f"model.weights={path} does not fit this architecture: {str(err).splitlines()[0]} "
                          f"(expected a state dict of the same torchvision model).") from None


def build_network(architecture: str, num_classes: int, image_size: int = 32, weights: str | None = None,
                  freeze: str = "none") -> tuple[nn.Module, str]:
    """Return ``(network, head_name)`` with ``num_classes`` outputs, weights loaded and backbone frozen."""
    if freeze not in FREEZE_MODES:
        raise ConfigError(f"model.freeze={freeze!r} is unknown: use one of {FREEZE_MODES}.")
    local = weights is not None and (Path(str(weights)).suffix in (".pth", ".pt", ".ckpt", ".bin") or Path(str(weights)).exists())
    if architecture == "custom_cnn":
        net = FaceMaskCNN(num_classes, image_size)
        if weights is not None and not local:
            raise ConfigError("custom_cnn has no pretrained torchvision weights: use model.weights=null or a local file.")
        if local:
            _load_local(net, Path(str(weights)))
        head = head_name(net)
    else:
        available = torchvision.models.list_models(module=torchvision.models)
        if architecture not in available:
            close = difflib.get_close_matches(architecture, available, n=3)
            raise ConfigError(f"model.architecture={architecture!r} is not a torchvision classification model"
                              + (f"; did you mean {', '.join(close)}?" if close else "."))
        net = torchvision.models.get_model(architecture, weights=None)
        if local:
            _load_local(net, Path(str(weights)))
        elif weights is not None:
            net.load_state_dict(_pretrained_state_dict(architecture, str(weights)))
        head = _replace_head(net, num_classes)
    if freeze == "backbone":
        for name, param in net.named_parameters():
            param.requires_grad = name.startswith(head + ".")
    return net, head
