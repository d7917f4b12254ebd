import pytest
import torch
import torchvision
from torch import nn

from maskdet.errors import ConfigError, WeightsUnavailableError
from maskdet.models import MaskClassifier, build_network
from tests.helpers import commands
from tests.helpers.data import settings


def test_custom_cnn_has_the_comp6721_parameter_count():
    net, head = build_network("custom_cnn", num_classes=4, image_size=32)
    assert sum(p.numel() for p in net.parameters()) == 4_733_004
    assert head == "fc_layer.6"
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 4)


@pytest.mark.parametrize("architecture, head", [("resnet18", "fc"), ("mobilenet_v2", "classifier.1"),
                                                ("efficientnet_b0", "classifier.1"), ("shufflenet_v2_x0_5", "fc")])
def test_torchvision_heads_follow_the_number_of_classes(architecture, head):
    net, found = build_network(architecture, num_classes=3)
    assert found == head
    assert net.get_submodule(head).out_features == 3
    assert net(torch.zeros(1, 3, 64, 64)).shape == (1, 3)


def test_unknown_architecture_and_freeze_are_explained():
    with pytest.raises(ConfigError, match="did you mean resnet18"):
        build_network("resnet_18", 2)
    with pytest.raises(ConfigError, match="model.freeze='all' is unknown"):
        build_network("resnet18", 2, freeze="all")
    with pytest.raises(ConfigError, match="not a weights name of resnet18"):
        build_network("resnet18", 2, weights="IMAGENET9K")


def test_offline_imagenet_weights_fail_fast_with_instructions(tmp_path, monkeypatch):
    # Every connection goes to a closed local port: the same failure as an offline machine, with no traffic.
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailableError) as err:
        build_network("resnet18", 2, weights="IMAGENET1K_V1")
    message = str(err.value)
    assert "Downloading the resnet18 IMAGENET1K_V1 weights" in message and "failed" in message
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message
    assert "model.weights=<path" in message


def test_local_weights_file_is_loaded_before_the_head_is_replaced(tmp_path):
    torch.manual_seed(123)
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    net, _ = build_network("resnet18", 2, weights=str(tmp_path / "resnet18.pth"), freeze="backbone")
    assert torch.equal(net.conv1.weight, reference.conv1.weight)
    assert torch.equal(net.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    assert trainable == ["fc.weight", "fc.bias"]


def test_local_weights_of_another_model_are_refused(tmp_path):
    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "r34.pth")
    with pytest.raises(ConfigError, match="does not fit this architecture"):
        build_network("resnet18", 2, weights=str(tmp_path / "r34.pth"))
    with pytest.raises(ConfigError, match="does not exist"):
        build_network("resnet18", 2, weights=str(tmp_path / "none.pth"))


def test_frozen_backbone_keeps_weights_and_batchnorm_statistics(tiny_dataset, cache_dir):
    """Through Lightning's own loop (which sets and restores module modes), not a hand-written one."""
    import lightning as L

    from maskdet.data import MaskDataModule

    L.seed_everything(0)
    dm = MaskDataModule(settings(tiny_dataset, cache_dir, image_size=48, batch_size=16))
    model = MaskClassifier("resnet18", num_classes=4, freeze="backbone",
                           optimizer=lambda params: torch.optim.SGD(params, lr=0.5))
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    after = model.net.state_dict()
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed == ["fc.bias", "fc.weight"]  # running_mean / running_var / num_batches_tracked unchanged
    assert model.head_name == "fc" and model.head.out_features == 4


def test_finetune_trains_everything():
    model = MaskClassifier("mobilenet_v2", num_classes=2, freeze="none")
    model.train()
    assert all(p.requires_grad for p in model.parameters())
    assert any(m.training for m in model.net.modules() if isinstance(m, nn.BatchNorm2d))


@pytest.mark.parametrize("architecture, size", [("googlenet", 64), ("inception_v3", 96), ("efficientnet_b0", 32),
                                                ("shufflenet_v2_x0_5", 32)])
def test_torchvision_names_train_as_single_output_classifiers(architecture, size):
    model = MaskClassifier(architecture=architecture, num_classes=3, image_size=size).train()
    logits = model(torch.rand(2, 3, size, size))
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 3)  # no auxiliary tuples in training mode


def test_a_network_that_cannot_take_the_image_size_is_refused_before_training():
    with pytest.raises(ConfigError, match=r"inception_v3 cannot take 32x32 images .* raise data.image_size"):
        build_network("inception_v3", 4, 32)


def test_a_frozen_random_backbone_is_warned_about(caplog):
    with caplog.at_level("WARNING", logger="maskdet.models"):
        build_network("resnet18", 4, 32, weights=None, freeze="backbone")
    assert "the frozen backbone is random" in caplog.text


def test_offline_weights_are_reported_before_any_data_work(tmp_path, cache_dir):
    import sys

    from tests.conftest import REPO, cli_env

    env = {**cli_env(tmp_path / "fresh_cache", tmp_path), "TORCH_HOME": str(tmp_path / "torch")}
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        env[var] = "http://127.0.0.1:9"
    env.pop("no_proxy", None), env.pop("NO_PROXY", None)
    result = commands.run([sys.executable, "-m", "maskdet.train", "+experiment=resnet18_frozen"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Downloading the resnet18" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "fresh_cache").exists(), "the embedded dataset must not be generated first"
