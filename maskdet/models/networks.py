"""Networks by name: the COMP6721 study's custom CNN or any torchvision classification model.

The head (the last ``nn.Linear``, found the same way for every architecture, as timm's
``reset_classifier`` does) is replaced to output the dataset's number of classes. Weights are ``None``,
a torchvision weights name (``IMAGENET1K_V1``, ``DEFAULT``), or a local state-dict file.
"""

from __future__ import annotations

import copy
import difflib
import logging
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from maskdet.errors import ConfigError, WeightsUnavailableError
from maskdet.models.custom_cnn import FaceMaskCNN

log = logging.getLogger("maskdet.models")
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
        _drop_auxiliary_heads(net)
        head = _replace_head(net, num_classes)
    if freeze == "backbone":
        if weights is None:
            log.warning("model.freeze=backbone with model.weights=null: the frozen backbone is random, so only a "
                        "linear head on random features is trained. Pass pretrained weights (e.g. "
                        "model.weights=IMAGENET1K_V1) or model.freeze=none unless this is deliberate.")
        for name, param in net.named_parameters():
            param.requires_grad = name.startswith(head + ".")
    _require_one_output(net, architecture, image_size)
    return net, head


def _drop_auxiliary_heads(net: nn.Module) -> None:
    """GoogLeNet and Inception v3 return (logits, aux...) tuples in training mode, with auxiliary heads of
    1000 outputs; they are switched off as torchvision itself does when asked for ``aux_logits=False``."""
    if getattr(net, "aux_logits", False):
        net.aux_logits = False
        for name in ("aux1", "aux2", "AuxLogits"):
            if hasattr(net, name):
                setattr(net, name, None)


def _require_one_output(net: nn.Module, architecture: str, image_size: int) -> None:
    """Refuse, before any training, a network that cannot take ``image_size`` images or whose training
    output is not one tensor of logits (the loss and every report expect exactly that)."""
    probe = copy.deepcopy(net).train()  # a copy: a training-mode forward would move BatchNorm statistics
    try:
        with torch.no_grad():
            out = probe(torch.zeros(2, 3, image_size, image_size))
    except RuntimeError as err:
        raise ConfigError(f"model.architecture={architecture} cannot take {image_size}x{image_size} images "
                          f"({str(err).splitlines()[0]}): raise data.image_size (e.g. 224).") from None
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"model.architecture={architecture} returns {type(out).__name__} in training mode, not "
                          "one tensor of logits; maskdet trains single-output classifiers only.")


def fetch_weights(architecture: str, weights: str | None) -> None:
    """Download (or find in the torch hub cache) named pretrained weights now, so that an offline machine
    hears about it before any data work rather than after."""
    if weights is None or architecture == "custom_cnn":
        return
    if Path(str(weights)).suffix in (".pth", ".pt", ".ckpt", ".bin") or Path(str(weights)).exists():
        if not Path(str(weights)).is_file():
            raise ConfigError(f"model.weights={weights} does not exist: pass a torchvision weights name, null, "
                              "or a state-dict file.")
        return
    _pretrained_state_dict(architecture, str(weights))
