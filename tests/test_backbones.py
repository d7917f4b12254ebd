"""Backbone families: every torchvision classifier class has a declared head that resets and gives the logits,
SqueezeNet's conv head trains from cached features, timm is an optional family, and a family is one function."""

import importlib.util
import subprocess
import sys
import typing

import numpy as np
import pytest
import torch
import torchvision
from hydra.utils import instantiate
from torch import nn

from maskdet.errors import ConfigError, WeightsUnavailableError
from maskdet.models import MaskClassifier, build_network
from maskdet.models.backbones import FAMILIES, family, torchvision_head, torchvision_heads
from maskdet.models.networks import fetch_weights
from tests.conftest import CONF, REPO, cli_env, compose_train
from tests.helpers import commands

CLOSED_PORT = "http://127.0.0.1:9"  # every connection refused: an offline machine, with no traffic


def _offline(monkeypatch):
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, CLOSED_PORT)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)


def _model_class(name: str) -> type:
    """The class a torchvision builder returns, read from its annotation (no network is built)."""
    return typing.get_type_hints(torchvision.models.get_model_builder(name))["return"]


def test_every_torchvision_classifier_resolves_to_a_declared_head():
    names = torchvision.models.list_models(module=torchvision.models)
    refused = {}
    for name in names:
        try:
            torchvision_head(_model_class(name))
        except ConfigError as err:
            refused[name] = str(err)
    assert not refused, f"torchvision models without a declared head: {refused}"
    assert set(torchvision_heads()) == {_model_class(n) for n in names}  # no stale entries either
    with pytest.raises(ConfigError, match=r"FasterRCNN has no declared classification head: add it to "
                                          r"torchvision_heads in maskdet/models/backbones.py"):
        torchvision_head(torchvision.models.detection.FasterRCNN)


SLOW = pytest.mark.slow
SMALLEST_PER_CLASS = [  # (builder, image size): the smallest builder of each class at a size it takes
    ("alexnet", 64), pytest.param("convnext_tiny", 32, marks=SLOW), ("densenet121", 32), ("efficientnet_b0", 32),
    ("googlenet", 64), pytest.param("inception_v3", 96, marks=SLOW), pytest.param("maxvit_t", 224, marks=SLOW), ("mnasnet0_5", 32),
    ("mobilenet_v2", 32), ("mobilenet_v3_small", 32), ("regnet_x_400mf", 32), ("resnet18", 32),
    ("shufflenet_v2_x0_5", 32), ("squeezenet1_1", 32), pytest.param("swin_t", 32, marks=SLOW), ("vgg11", 32),
    pytest.param("vit_b_16", 224, marks=SLOW),
]


def test_the_parametrised_builders_cover_every_declared_class():
    names = [p.values[0] if hasattr(p, "values") else p[0] for p in SMALLEST_PER_CLASS]
    assert {_model_class(n) for n in names} == set(torchvision_heads())


@pytest.mark.parametrize("architecture, size", SMALLEST_PER_CLASS)
def test_each_torchvision_class_resets_its_declared_head_and_the_head_gives_the_logits(architecture, size):
    torch.manual_seed(0)
    net, head_name = build_network(architecture, num_classes=3, image_size=size)
    assert type(net) is _model_class(architecture) and head_name == torchvision_head(type(net)).module
    images = torch.rand(2, 3, size, size)
    assert net.train()(images).shape == (2, 3)
    # the head's input (what the feature cache stores) through the head, flattened, is the network's output
    head, captured = net.get_submodule(head_name), []
    handle = head.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    with torch.no_grad():
        logits = net.eval()(images)
    handle.remove()
    assert logits.shape == (2, 3)
    torch.testing.assert_close(head(captured[0]).flatten(1), logits)


def test_squeezenet_head_is_its_conv_classifier():
    model = MaskClassifier("squeezenet1_1", num_classes=3, image_size=64, freeze="backbone")
    assert model.head_name == "classifier"
    assert isinstance(model.net.classifier[1], nn.Conv2d) and model.net.classifier[1].out_channels == 3
    trainable = [n for n, p in model.net.named_parameters() if p.requires_grad]
    assert trainable == ["classifier.1.weight", "classifier.1.bias"]
    images = torch.rand(4, 3, 64, 64)
    features = model.backbone_features(images)
    assert features.shape == (4, 512, 3, 3)
    with torch.no_grad():
        torch.testing.assert_close(model.eval().head_logits(features), model(images))


@pytest.mark.slow
def test_squeezenet_trains_its_head_from_cached_features_as_through_the_backbone(tiny_dataset, cache_dir, tmp_path):
    from maskdet.evaluation.explain import find_target_layer
    from maskdet.train import train

    common = ["data=folder", f"data.root={tiny_dataset}", "data.num_folds=3", "model=resnet18",
              "model.architecture=squeezenet1_1", "model.weights=null", "model.freeze=backbone",
              "data.image_size=64", "trainer.max_epochs=2", "data.batch_size=16", "~logger", "trainer.deterministic=true"]
    cached = train(compose_train([*common, "data.feature_cache=true"], tmp_path / "cached", cache_dir))
    through = train(compose_train([*common, "data.feature_cache=false"], tmp_path / "through", cache_dir))
    assert cached["test"]["test/acc"] == pytest.approx(through["test"]["test/acc"], abs=1e-6)
    assert cached["test"]["test/loss"] == pytest.approx(through["test"]["test/loss"], rel=1e-4)
    heads = [torch.load(m["best_checkpoint"], weights_only=True)["state_dict"]["net.classifier.1.weight"]
             for m in (cached, through)]
    assert torch.allclose(heads[0], heads[1], atol=1e-5)
    shapes = {np.load(f, mmap_mode="r").shape[1:] for f in (cache_dir / "decoded").glob("64px-*/features-*.npy")}
    assert (512, 3, 3) in shapes  # the conv head's input, cached as it is
    from maskdet.checkpoints import load_classifier

    model = load_classifier(cached["best_checkpoint"])
    assert model.head_name == "classifier"
    assert find_target_layer(model, 64) == "net.features"  # Grad-CAM looks at the backbone, not the conv head


def test_a_network_with_two_outputs_is_refused(monkeypatch):
    class ClassesAndBox(nn.Module):  # a detector-style network: class logits and a box
        def __init__(self, num_classes):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.fc, self.box = nn.Linear(8, num_classes), nn.Linear(8, 4)

        def forward(self, x):
            features = self.body(x)
            return self.fc(features), self.box(features)

    monkeypatch.setitem(FAMILIES, "toy", None)  # removed again after the test
    family("toy")(lambda name, num_classes, image_size, weights: (ClassesAndBox(num_classes), "fc"))
    with pytest.raises(ConfigError, match=r"toy/two returns tuple in training mode, not one tensor of logits"):
        build_network("toy/two", 3, 32)


def build_tiny(name: str, num_classes: int, image_size: int, weights):
    """A whole backbone family: the build function a family is (see test_a_family_is_one_function)."""
    from maskdet.models.backbones import load_weights_file

    if isinstance(weights, str):
        raise ConfigError("tiny has no named weights")
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
    if weights is not None:
        load_weights_file(net, weights)
    return net, "3"


@pytest.mark.parametrize("registered", [True, False])
def test_a_family_is_one_function(monkeypatch, tmp_path, registered):
    """Registered with @family, or named by its import path from outside maskdet: it builds, trains from
    cached features, freezes, loads files and refuses named weights before any data work."""
    if registered:
        monkeypatch.setitem(FAMILIES, "tiny", None)  # removed again after the test
        family("tiny")(build_tiny)
    architecture = "tiny/net" if registered else "tests.test_backbones.build_tiny/net"
    model = MaskClassifier(architecture, num_classes=2, image_size=16, freeze="backbone")
    features = model.backbone_features(torch.rand(5, 3, 16, 16))
    assert features.shape == (5, 4) and model.head_logits(features).shape == (5, 2)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["net.3.weight", "net.3.bias"]
    torch.save(model.net.state_dict(), tmp_path / "tiny.pth")
    again, _ = build_network(architecture, 2, 16, weights=str(tmp_path / "tiny.pth"))
    assert torch.equal(again[0].weight, model.net[0].weight)
    fetch_weights(architecture, str(tmp_path / "tiny.pth"))  # a local file: nothing to fetch
    with pytest.raises(ConfigError, match="tiny has no named weights"):
        fetch_weights(architecture, "IMAGENET")  # no fetch declared: fetching builds once, so refusals come early


def build_misdeclared(name: str, num_classes: int, image_size: int, weights):
    """A family with two mistakes a new family can make: ``hed`` names no module, ``fixed`` ignores num_classes."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10 if name == "fixed" else num_classes))
    return net, "hed" if name == "hed" else "3"


def test_a_family_s_declared_head_and_class_count_are_checked_before_any_data_work(tiny_dataset, cache_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"declares the head 'hed', which the network does not have"):
        build_network("tests.test_backbones.build_misdeclared/hed", 3, 16)
    with pytest.raises(ConfigError, match=r"outputs of shape \(2, 10\) for 2 images, not \(2, 3\)"):
        build_network("tests.test_backbones.build_misdeclared/fixed", 3, 16)
    # through the CLI: refused by preflight with maskdet's message (not Hydra's wrapper), before the data is read
    result = commands.run([sys.executable, "-m", "maskdet.train", "data=folder", f"data.root={tiny_dataset}",
                             "model.architecture=tests.test_backbones.build_misdeclared/hed", "data.num_folds=3"],
                            cwd=REPO, env=cli_env(tmp_path / "fresh_cache", tmp_path), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "maskdet: model.architecture=tests.test_backbones.build_misdeclared/hed: its family declares the head 'hed'" \
        in result.stderr
    assert not (tmp_path / "fresh_cache").exists()  # no dataset scanned, no cache written


def test_unknown_families_are_explained():
    with pytest.raises(ConfigError, match=r"'nothere' is neither a backbone family \(custom_cnn, timm, torchvision\)"):
        build_network("nothere/net", 2)
    with pytest.raises(ConfigError, match=r"import path of a build function \(No module named 'nopkg'\)"):
        build_network("nopkg.build/net", 2)


def test_every_model_config_builds(tmp_path):
    """Each maskdet/conf/model/*.yaml, with weights=null, builds the classifier train.py would build."""
    names = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
    assert {"custom_cnn", "resnet18", "mobilenet_v2", "timm"} <= set(names)
    for name in names:
        if name == "timm" and importlib.util.find_spec("timm") is None:
            continue  # an optional extra; test_timm_names_without_timm_say_how_to_install covers its absence
        cfg = compose_train([f"model={name}", "model.weights=null"], tmp_path / name, tmp_path / "cache")
        model = instantiate(cfg.model, num_classes=4, class_names=list("abcd"), image_size=64)
        assert model(torch.rand(2, 3, 64, 64)).shape == (2, 4), name


# -------------------------------------------------------------------------------------------- timm
@pytest.fixture
def timm():
    """timm, an optional extra (in the dev extra)."""
    return pytest.importorskip("timm")


def test_normalisation_comes_from_the_weights_own_metadata(timm):
    """model.mean / model.std null (the torchvision and timm model configs): the published weights' own
    (mean, std) is used and saved with the model, not a copy in each YAML; given values win."""
    from torchvision.models import ResNet18_Weights

    from maskdet.models.backbones import _torchvision_normalisation, weights_normalisation

    published = ResNet18_Weights.IMAGENET1K_V1.transforms()
    assert weights_normalisation("resnet18", "IMAGENET1K_V1") == (tuple(published.mean), tuple(published.std))
    assert _torchvision_normalisation("resnet18", None) == (tuple(published.mean), tuple(published.std))  # read, not
    # ImageNet's fallback (which has the same numbers): null weights take the default published weights' metadata
    vit = timm.models.get_pretrained_cfg("vit_tiny_patch16_224.augreg_in21k")  # trained at mean 0.5, std 0.5
    assert weights_normalisation("timm/vit_tiny_patch16_224", "augreg_in21k") == (tuple(vit.mean), tuple(vit.std))
    assert tuple(vit.mean) == (0.5, 0.5, 0.5)
    model = MaskClassifier("timm/test_efficientnet", num_classes=3, image_size=32, weights=None)
    declared = timm.models.get_pretrained_cfg("test_efficientnet")
    assert (model.hparams.mean, model.hparams.std) == (list(declared.mean), list(declared.std))
    assert MaskClassifier("custom_cnn", num_classes=3, mean=[0.5] * 3, std=[0.25] * 3).hparams.std == [0.25] * 3


def test_a_run_saved_with_the_normalisation_s_numbers_resumes_under_null(tmp_path, monkeypatch):
    """A run saved before the normalisation came from the weights' metadata holds its numbers; the configs now
    say null. Resuming compares what null stands for, so the run resumes; other numbers are still refused."""
    from omegaconf import OmegaConf

    from maskdet.resume import differing_settings

    def cfg(mean, std):
        return OmegaConf.create({"seed": 0, "data": {}, "model": {"architecture": "resnet18", "weights": "IMAGENET1K_V1",
                                                                 "mean": mean, "std": std}})

    saved = cfg([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    assert differing_settings(saved, cfg(None, None)) == []
    assert differing_settings(saved, cfg([0.5, 0.5, 0.5], None)) == \
        ["model.mean: run had [0.485, 0.456, 0.406], this command [0.5, 0.5, 0.5]"]
    # a stranger's saved config naming code as its architecture: compared as text, never imported
    (tmp_path / "planted_family.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\nbuild = None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    planted = OmegaConf.create({"seed": 0, "data": {}, "model": {"architecture": "planted_family.build/x",
                                                                 "weights": None, "mean": None, "std": None}})
    assert any(d.startswith("model.architecture") for d in differing_settings(planted, cfg(None, None)))
    assert not (tmp_path / "ran").exists()


def test_a_timm_model_resets_its_declared_head_and_trains_a_step(timm):
    torch.manual_seed(0)
    model = MaskClassifier("timm/test_efficientnet", num_classes=3, image_size=32)
    assert model.head_name == "classifier" == model.net.pretrained_cfg["classifier"]
    assert model.head.out_features == 3
    batch = {"image": torch.rand(4, 3, 32, 32), "label": torch.tensor([0, 1, 2, 0])}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    loss = torch.nn.functional.cross_entropy(model(batch["image"]), batch["label"])
    loss.backward()
    before = model.head.weight.detach().clone()
    optimizer.step()
    assert torch.isfinite(loss) and not torch.equal(before, model.head.weight)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_local_timm_weights_file_loads_before_the_head_is_reset(timm, tmp_path, suffix):
    torch.manual_seed(1)
    published = timm.create_model("test_resnet")  # 1000 ImageNet classes, as a published file holds
    path = tmp_path / f"test_resnet{suffix}"
    if suffix == ".pth":
        torch.save(published.state_dict(), path)
    else:
        from safetensors.torch import save_file

        save_file(published.state_dict(), path)
    net, head = build_network("timm/test_resnet", 3, 32, weights=str(path), freeze="backbone")
    assert head == "fc" and net.fc.out_features == 3
    assert torch.equal(net.conv1[0].weight, published.conv1[0].weight)
    assert torch.equal(net.layer4[0].bn2.running_var, published.layer4[0].bn2.running_var)
    assert [n for n, p in net.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    torch.save(timm.create_model("test_efficientnet").state_dict(), tmp_path / "other.pth")
    with pytest.raises(ConfigError, match="does not fit this architecture"):
        build_network("timm/test_resnet", 3, 32, weights=str(tmp_path / "other.pth"))


def test_named_timm_weights_come_from_the_hugging_face_cache_offline(timm, tmp_path, monkeypatch):
    """huggingface_hub's own cache layout (refs/main -> snapshots/<commit>/<file>), read with no network."""
    import huggingface_hub
    from safetensors.torch import save_file

    _offline(monkeypatch)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # what $HF_HOME sets at import
    repo = tmp_path / "models--timm--test_resnet.r160_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    torch.manual_seed(2)
    published = timm.create_model("test_resnet.r160_in1k")
    save_file(published.state_dict(), repo / "snapshots" / ("0" * 40) / "model.safetensors")
    fetch_weights("timm/test_resnet", "r160_in1k")
    net, _ = build_network("timm/test_resnet", 2, 32, weights="r160_in1k")
    assert torch.equal(net.conv1[0].weight, published.conv1[0].weight) and net.fc.out_features == 2


def test_named_timm_weights_offline_fail_fast_with_instructions(timm, tmp_path, monkeypatch):
    import huggingface_hub

    _offline(monkeypatch)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsUnavailableError) as err:
        fetch_weights("timm/test_resnet", "DEFAULT")
    message = str(err.value)
    assert "Downloading the timm/test_resnet r160_in1k weights (model.safetensors of " \
           "https://huggingface.co/timm/test_resnet.r160_in1k) failed" in message
    assert str(tmp_path) in message and "model.weights=<path to model.safetensors>" in message
    with pytest.raises(ConfigError, match=r"'in22k' is not a pretrained weight of timm/test_resnet: use one of "
                                          r"\['r160_in1k', 'DEFAULT'\]"):
        build_network("timm/test_resnet", 2, weights="in22k")
    with pytest.raises(ConfigError, match=r"'timm/resnet_10t' is not a timm model; did you mean timm/resnet10t"):
        build_network("timm/resnet_10t", 2)


def test_a_timm_model_with_two_heads_is_refused(timm):
    with pytest.raises(ConfigError, match=r"has several heads \('head', 'head_dist'\)"):
        build_network("timm/deit_tiny_distilled_patch16_224", 2, 224)


@pytest.mark.slow
def test_timm_names_without_timm_say_how_to_install(tmp_path):
    """``model=timm`` on a machine without timm: refused before any data work, without a traceback."""
    env = cli_env(tmp_path / "fresh_cache", tmp_path)
    code = ("import sys; sys.modules['timm'] = None\n"  # what Python does for a package that is not installed
            "from maskdet.train import main\n"
            "sys.argv = ['maskdet-train', 'model=timm']; main()")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "model.architecture=timm/... needs timm" in result.stderr and "pip install maskdet[timm]" in result.stderr
    assert not (tmp_path / "fresh_cache").exists(), "no data work before the refusal"
