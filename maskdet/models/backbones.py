"""Backbone families: how each builds a network by name, which module is its classification head, and
how that head is reset to the dataset's classes.

A family is one build function plus one config, ``maskdet/conf/model/<name>.yaml``.
``model.architecture=<family>/<network>`` picks it: ``timm/resnet10t`` for a family registered here with
``@family("timm")``, ``my_package.backbones.build_mine/<network>`` for a build function anywhere else (its
import path, as a data layout's reader is named). A bare name is a family of that name (``custom_cnn``)
or else a torchvision model (``resnet18``).

The head is declared, never guessed: a table for torchvision, the model's own ``pretrained_cfg`` for timm.
Its input is what the frozen-backbone feature cache stores, and ``head(features).flatten(1)`` gives the
logits (a conv head such as SqueezeNet's outputs N x C x 1 x 1).
"""

from __future__ import annotations

import difflib
import functools
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlparse

import torch
from torch import nn

from maskdet.config import import_target
from maskdet.errors import ConfigError, WeightsUnavailableError
from maskdet.models.custom_cnn import FaceMaskCNN

DOWNLOAD_TIMEOUT_S = 30  # an unreachable server must stop the run, not hang it
WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors")

# model.weights as a build function receives it: None (random), a named pretrained weight, or a local file
Weights = str | Path | None
Build = Callable[[str, int, int, Weights], tuple[nn.Module, str]]
Normalisation = tuple[tuple[float, ...], tuple[float, ...]]  # (mean, std), one number per colour channel
IMAGENET_NORMALISATION: Normalisation = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # families that declare none


@dataclass(frozen=True)
class Family:
    """``build(network name, num_classes, image_size, weights)`` returns ``(network, head name)``: the network
    with a ``num_classes``-output head and the qualified name of that head. ``fetch(network name, weight
    name)``, where given, brings a named weight into the local cache without building the network; without
    it, fetching builds the network once. ``normalisation(network name, weights)``, where given, reads the
    (mean, std) the published weights were trained with from their own metadata."""

    build: Build
    fetch: Callable[[str, str], object] | None = None
    normalisation: Callable[[str, Weights], Normalisation | None] | None = None


FAMILIES: dict[str, Family] = {}


def family(name: str, fetch: Callable[[str, str], object] | None = None,
           normalisation: Callable[[str, Weights], Normalisation | None] | None = None) -> Callable[[Build], Build]:
    """Register a build function as the backbone family ``name``."""

    def register(build: Build) -> Build:
        FAMILIES[name] = Family(build, fetch, normalisation)
        return build

    return register


def weights_normalisation(architecture: str, weights: Weights) -> Normalisation:
    """The (mean, std) of ``model.mean`` / ``model.std`` when they are null: what the family's published weights
    declare in their own metadata (torchvision's ``weights.transforms()``, timm's ``pretrained_cfg``; for a
    local file or null weights, those of the network's default published weights), so it is not copied into
    each model YAML; ImageNet's for a family that declares none."""
    chosen, name = resolve(architecture)
    found = chosen.normalisation(name, weights) if chosen.normalisation is not None else None
    return found or IMAGENET_NORMALISATION


def resolve(architecture: str) -> tuple[Family, str]:
    """The family and the network name that ``model.architecture`` means."""
    prefix, _, name = architecture.partition("/")  # the first '/': timm's hf-hub:org/model names have more
    if not name:
        prefix, name = (architecture if architecture in FAMILIES else "torchvision"), architecture
    if prefix in FAMILIES:
        return FAMILIES[prefix], name
    try:
        return Family(import_target(prefix)), name
    except (ImportError, AttributeError) as err:
        problem = str(err)
    raise ConfigError(f"model.architecture={architecture!r}: {prefix!r} is neither a backbone family "
                      f"({', '.join(sorted(FAMILIES))}) nor the import path of a build function ({problem}); use "
                      "<family>/<name>, <package.module.function>/<name>, or a torchvision name alone.")


def local_weights(weights: object) -> Path | None:
    """The state-dict file ``model.weights`` names, or None when it is null or a named pretrained weight."""
    if weights is None:
        return None
    path = Path(str(weights))
    if path.suffix not in WEIGHT_FILE_SUFFIXES and not path.exists():
        return None
    if not path.is_file():
        raise ConfigError(f"model.weights={path} does not exist: pass a pretrained weights name, null, "
                          "or a state-dict file.")
    return path


def load_weights_file(net: nn.Module, path: Path) -> None:
    """Load a state-dict file (``torch.save``, safetensors, or a maskdet checkpoint) into ``net``, strictly."""
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file  # installed with timm and huggingface_hub
        except ImportError:
            raise ConfigError(f"model.weights={path} is a safetensors file: pip install safetensors "
                              "(it comes with maskdet[timm]).") from None
        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:  # a Lightning checkpoint of maskdet
        state = {k.removeprefix("net."): v for k, v in state["state_dict"].items() if k.startswith("net.")}
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise ConfigError(f"model.weights={path} does not fit this architecture: {str(err).splitlines()[0]} "
                          f"(expected a state dict of the same model).") from None


def replace_output_layer(net: nn.Module, name: str, num_classes: int) -> None:
    """Swap the layer ``name`` (an ``nn.Linear`` or a conv to the classes) for a new one with ``num_classes``
    outputs."""
    old = net.get_submodule(name)
    if isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, num_classes)
    elif isinstance(old, nn.Conv2d):
        new = nn.Conv2d(old.in_channels, num_classes, old.kernel_size)
    else:
        raise ConfigError(f"{type(net).__name__}.{name} is a {type(old).__name__}, not an nn.Linear or nn.Conv2d: "
                          "declare the layer that outputs the classes (torchvision_heads in maskdet/models/backbones.py).")
    parent, _, child = name.rpartition(".")
    setattr(net.get_submodule(parent), child, new)


# --------------------------------------------------------------------------------------------- custom_cnn
@family("custom_cnn")
def build_custom_cnn(name: str, num_classes: int, image_size: int, weights: Weights) -> tuple[nn.Module, str]:
    """The COMP6721 study's CNN, built with its head at ``num_classes``; a local file of it loads as is."""
    if isinstance(weights, str):
        raise ConfigError("custom_cnn has no pretrained weights: use model.weights=null or a local file.")
    net = FaceMaskCNN(num_classes, image_size)
    if weights is not None:
        load_weights_file(net, weights)
    return net, "fc_layer.6"


# -------------------------------------------------------------------------------------------- torchvision
class Head(NamedTuple):
    """A declared head: ``module`` maps the backbone's features to the logits; ``output`` is the layer
    inside it that outputs the classes, where that is not the head itself."""

    module: str
    output: str | None = None


@functools.cache
def torchvision_heads() -> dict[type[nn.Module], Head]:
    """Each torchvision model class's declared head (checked against torchvision 0.29); a function, so that
    torchvision is imported only when a torchvision network is built (the custom CNN loads without it)."""
    from torchvision import models as tvm

    return {
        tvm.AlexNet: Head("classifier.6"),
        tvm.ConvNeXt: Head("classifier.2"),
        tvm.DenseNet: Head("classifier"),
        tvm.EfficientNet: Head("classifier.1"),
        tvm.GoogLeNet: Head("fc"),
        tvm.Inception3: Head("fc"),
        tvm.MaxVit: Head("classifier.5"),
        tvm.MNASNet: Head("classifier.1"),
        tvm.MobileNetV2: Head("classifier.1"),
        tvm.MobileNetV3: Head("classifier.3"),
        tvm.RegNet: Head("fc"),
        tvm.ResNet: Head("fc"),
        tvm.ShuffleNetV2: Head("fc"),
        tvm.SqueezeNet: Head("classifier", output="classifier.1"),  # dropout, 1x1 conv to the classes, ReLU, pool
        tvm.SwinTransformer: Head("head"),
        tvm.VGG: Head("classifier.6"),
        tvm.VisionTransformer: Head("heads.head"),
    }


def torchvision_head(model_class: type) -> Head:
    """The declared head of a torchvision model class (or of the class it derives from)."""
    heads = torchvision_heads()
    for cls in model_class.__mro__:
        if cls in heads:
            return heads[cls]
    raise ConfigError(f"torchvision's {model_class.__name__} has no declared classification head: add it to "
                      "torchvision_heads in maskdet/models/backbones.py (the qualified name of the module that "
                      "maps the backbone's features to the logits).")


def _pretrained_state_dict(architecture: str, weights: str) -> dict:
    try:
        import torchvision

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


def _drop_auxiliary_heads(net: nn.Module) -> None:
    """GoogLeNet and Inception v3 return (logits, aux...) tuples in training mode, with auxiliary heads of
    1000 outputs; they are switched off as torchvision itself does when asked for ``aux_logits=False``."""
    if getattr(net, "aux_logits", False):
        net.aux_logits = False
        for name in ("aux1", "aux2", "AuxLogits"):
            if hasattr(net, name):
                setattr(net, name, None)


def _torchvision_normalisation(name: str, weights: Weights) -> Normalisation | None:
    import torchvision

    try:
        published = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError):  # not a torchvision model: its build refuses it with a message
        return None
    chosen = published[weights] if isinstance(weights, str) and weights in published.__members__ else published.DEFAULT
    preprocessing = chosen.transforms()
    return tuple(preprocessing.mean), tuple(preprocessing.std)


@family("torchvision", fetch=_pretrained_state_dict, normalisation=_torchvision_normalisation)
def build_torchvision(name: str, num_classes: int, image_size: int, weights: Weights) -> tuple[nn.Module, str]:
    """A torchvision classification model: weights (``IMAGENET1K_V1``, ``DEFAULT``, a file) go into the
    ImageNet network as published, then the declared head is reset."""
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        close = difflib.get_close_matches(name, available, n=3)
        raise ConfigError(f"model.architecture={name!r} is not a torchvision classification model"
                          + (f"; did you mean {', '.join(close)}?" if close else "."))
    net = torchvision.models.get_model(name, weights=None)
    head = torchvision_head(type(net))
    if isinstance(weights, Path):
        load_weights_file(net, weights)
    elif weights is not None:
        net.load_state_dict(_pretrained_state_dict(name, weights))
    _drop_auxiliary_heads(net)
    replace_output_layer(net, head.output or head.module, num_classes)
    return net, head.module


# ------------------------------------------------------------------------------------------------- timm
def _import_timm():
    try:
        import timm
    except ImportError:
        raise ConfigError("model.architecture=timm/... needs timm, an optional extra: pip install maskdet[timm] "
                          "(or pip install 'timm>=1.0').") from None
    return timm


def _timm_published(name: str, weights: str) -> tuple[str, Path]:
    """The full name (``arch.tag``) and local file of timm weight ``weights`` (a tag such as ``c3_in1k``, or
    ``DEFAULT`` for timm's default), from the Hugging Face cache, else downloaded from the hub."""
    timm = _import_timm()
    import huggingface_hub  # a dependency of timm
    arch = name.partition(".")[0]
    tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*")]
    try:
        cfg = timm.models.get_pretrained_cfg(name if weights == "DEFAULT" else f"{arch}.{weights}")
    except RuntimeError:  # an unknown tag
        cfg = None
    if cfg is None or cfg.tag not in tags:  # timm describes untrained models too
        raise ConfigError(f"model.weights={weights!r} is not a pretrained weight of timm/{arch}: use "
                          + (f"one of {tags + ['DEFAULT']}, " if tags else "") + "null or a path to a state-dict file.")
    if not cfg.hf_hub_id:
        raise ConfigError(f"timm/{arch} {cfg.tag} is not on the Hugging Face hub: download {cfg.url} yourself "
                          "and pass model.weights=<path to the file>.")
    repo, filename = cfg.hf_hub_id, cfg.hf_hub_filename or "model.safetensors"
    cached = huggingface_hub.try_to_load_from_cache(repo, filename)
    if isinstance(cached, str):
        return f"{arch}.{cfg.tag}", Path(cached)
    try:
        # one quick request first: hf_hub_download retries an unreachable hub for about half a minute per file
        huggingface_hub.get_hf_file_metadata(huggingface_hub.hf_hub_url(repo, filename), timeout=DOWNLOAD_TIMEOUT_S)
        return f"{arch}.{cfg.tag}", Path(huggingface_hub.hf_hub_download(repo, filename, etag_timeout=DOWNLOAD_TIMEOUT_S))
    except Exception as err:  # connection, timeout, HTTP and offline-mode errors: all mean "not available"
        raise WeightsUnavailableError(
            f"Downloading the timm/{arch} {cfg.tag} weights ({filename} of https://huggingface.co/{repo}) failed "
            f"({err}). If this machine is offline, fetch that file elsewhere and either put it in the Hugging Face "
            f"cache ({huggingface_hub.constants.HF_HUB_CACHE}, see $HF_HOME; `hf download {repo} {filename}` "
            f"fills it) or pass model.weights=<path to {filename}>; model.weights=null trains from random "
            f"initialisation."
        ) from None


def _timm_normalisation(name: str, weights: Weights) -> Normalisation | None:
    timm = _import_timm()
    arch = name.partition(".")[0]
    tagged = f"{arch}.{weights}" if isinstance(weights, str) and weights != "DEFAULT" and local_weights(weights) is None \
        else name
    try:
        cfg = timm.models.get_pretrained_cfg(tagged)
    except RuntimeError:  # an unknown tag: its fetch refuses it with a message
        cfg = None
    return (tuple(cfg.mean), tuple(cfg.std)) if cfg is not None and cfg.mean and cfg.std else None


@family("timm", fetch=_timm_published, normalisation=_timm_normalisation)
def build_timm(name: str, num_classes: int, image_size: int, weights: Weights) -> tuple[nn.Module, str]:
    """A timm model (optional extra ``maskdet[timm]``): weights (a tag such as ``c3_in1k``, ``DEFAULT``, a
    file) go into the network as published, then ``reset_classifier``; the head is the one timm declares."""
    timm = _import_timm()
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        raise ConfigError(f"model.architecture='timm/{name}' is not a timm model"
                          + (f"; did you mean {', '.join('timm/' + c for c in close)}?" if close else "."))
    if isinstance(weights, str):
        name, weights = _timm_published(name, weights)  # "arch.tag": built with that weight's class count
    net = timm.create_model(name, pretrained=False)
    if weights is not None:
        load_weights_file(net, weights)
    net.reset_classifier(num_classes)
    head = net.pretrained_cfg["classifier"]
    if not isinstance(head, str):
        raise ConfigError(f"timm/{name} has several heads {tuple(head)}; maskdet trains single-head classifiers only.")
    return net, head
