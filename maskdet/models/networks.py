"""Networks by name, ready to train: a backbone family (``backbones.py``) builds the network with its
declared head reset to the dataset's classes; here the backbone is frozen as asked and the network is
checked to take the image size and to give one tensor of logits.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from maskdet.errors import ConfigError
from maskdet.models.backbones import local_weights, resolve

log = logging.getLogger("maskdet.models")
FREEZE_MODES = ("none", "backbone")


def build_network(architecture: str, num_classes: int, image_size: int = 32, weights: str | None = None,
                  freeze: str = "none") -> tuple[nn.Module, str]:
    """Return ``(network, head_name)`` with ``num_classes`` outputs, weights loaded and backbone frozen."""
    if freeze not in FREEZE_MODES:
        raise ConfigError(f"model.freeze={freeze!r} is unknown: use one of {FREEZE_MODES}.")
    family, name = resolve(architecture)
    net, head = family.build(name, num_classes, image_size, local_weights(weights) or weights)
    try:
        net.get_submodule(head)
    except AttributeError:
        raise ConfigError(f"model.architecture={architecture}: its family declares the head {head!r}, which the "
                          "network does not have; the family's build function must return the qualified name of "
                          "the classification head (a name of net.named_modules()).") from None
    if freeze == "backbone":
        if weights is None:
            log.warning("model.freeze=backbone with model.weights=null: the frozen backbone is random, so only a "
                        "linear head on random features is trained. Pass pretrained weights (e.g. "
                        "model.weights=IMAGENET1K_V1) or model.freeze=none unless this is deliberate.")
        for param_name, param in net.named_parameters():
            param.requires_grad = param_name.startswith(head + ".")
    _require_one_output(net, architecture, image_size, num_classes)
    return net, head


def _require_one_output(net: nn.Module, architecture: str, image_size: int, num_classes: int) -> None:
    """Refuse, before any training, a network that cannot take ``image_size`` images or whose training
    output is not one tensor of ``num_classes`` logits per image (the loss and every report expect that)."""
    probe = copy.deepcopy(net).train()  # a copy: a training-mode forward would move BatchNorm statistics
    try:
        with torch.no_grad():
            out = probe(torch.zeros(2, 3, image_size, image_size))
    except (RuntimeError, AssertionError, ValueError) as err:  # vision transformers assert their one input size
        raise ConfigError(f"model.architecture={architecture} cannot take {image_size}x{image_size} images "
                          f"({str(err).splitlines()[0]}): raise data.image_size (e.g. 224).") from None
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"model.architecture={architecture} returns {type(out).__name__} in training mode, not "
                          "one tensor of logits; maskdet trains single-output classifiers only.")
    if tuple(out.shape) != (2, num_classes):
        raise ConfigError(f"model.architecture={architecture} gives outputs of shape {tuple(out.shape)} for 2 images, "
                          f"not (2, {num_classes}): its head must be reset to the dataset's {num_classes} classes "
                          "(the family's build function receives num_classes).")


def fetch_weights(architecture: str, weights: str | None) -> None:
    """Download (or find in the local cache) named pretrained weights now, so that an offline machine
    hears about it before any data work rather than after."""
    if weights is None or local_weights(weights) is not None:
        return
    family, name = resolve(architecture)
    if family.fetch is not None:
        family.fetch(name, str(weights))
    else:
        family.build(name, 2, 224, str(weights))
