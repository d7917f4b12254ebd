"""One LightningModule for every network: cross-entropy, metrics, optimiser from config partials.

Inputs are float images in [0, 1]; the module normalises them itself, so a checkpoint carries its whole
preprocessing (image size, mean, std, class names) for evaluation, prediction and export.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import MaxMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from maskdet.finite import DivergedError
from maskdet.models.backbones import weights_normalisation
from maskdet.models.classifier import calibrated_logits, default_temperature, register_preprocessing
from maskdet.models.networks import build_network


class MaskClassifier(L.LightningModule):
    def __init__(
        self,
        architecture: str = "custom_cnn",
        num_classes: int = 4,
        class_names: Sequence[str] | None = None,
        image_size: int = 32,
        weights: str | None = None,
        freeze: str = "none",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., object] | None = None,
    ):
        super().__init__()
        if mean is None or std is None:  # the published weights' own normalisation (ImageNet's where none)
            published = weights_normalisation(architecture, weights)
            mean, std = published[0] if mean is None else mean, published[1] if std is None else std
        class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        self.save_hyperparameters({
            "architecture": architecture, "num_classes": int(num_classes), "class_names": class_names,
            "image_size": int(image_size), "weights": None if weights is None else str(weights), "freeze": freeze,
            "mean": [float(m) for m in mean], "std": [float(s) for s in std],
        }, logger=False)  # train.py logs the run's settings with its final metrics instead (HParams tab)
        self.net, self.head_name = build_network(architecture, num_classes, image_size, weights, freeze)
        register_preprocessing(self, mean, std)  # normalisation and temperature, as FaceClassifier's
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler

        def metrics(prefix: str) -> MetricCollection:
            return MetricCollection({
                "acc": MulticlassAccuracy(num_classes, average="micro"),
                "f1": MulticlassF1Score(num_classes, average="macro"),
            }, prefix=prefix)

        self.train_metrics, self.val_metrics, self.test_metrics = metrics("train/"), metrics("val/"), metrics("test/")
        self.val_acc_best = MaxMetric()
        self._resumed_rng: dict | None = None
        self.resumed_val_metrics: dict[str, float] = {}
        self.test_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.train()  # apply the frozen-backbone modes from the start: Lightning restores captured modes

    # ----------------------------------------------------------------- model
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return calibrated_logits(self, images)

    def on_fit_start(self) -> None:
        if self.device.type == "cuda":
            self.net.to(memory_format=torch.channels_last)

    @property
    def head(self) -> torch.nn.Module:
        """The classification head its backbone family declares: logits = head(features).flatten(1)."""
        return self.net.get_submodule(self.head_name)

    @torch.no_grad()
    def backbone_features(self, images: torch.Tensor) -> torch.Tensor:
        """The head's input for float images in [0, 1], with the backbone in eval mode."""
        captured = []
        handle = self.head.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
        was_training = self.training
        try:
            self.eval()
            self(images.to(self.device))
        finally:
            handle.remove()
            self.train(was_training)
        return captured[0]

    def head_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from cached head inputs. A conv head (SqueezeNet's) gives N x C x 1 x 1, flattened as its
        network does; spatial features are laid out channels-last as in ``forward``, since a dropout mask
        follows memory order and training on cached features must equal training through the backbone."""
        if features.dim() == 4:
            features = features.contiguous(memory_format=torch.channels_last)
        return self.head(features).flatten(1) / self.temperature

    def backbone_key(self) -> str:
        """Identifies the frozen backbone's function: architecture, weights (by content), normalisation."""
        digest = hashlib.sha256(repr((self.hparams.architecture, self.hparams.mean, self.hparams.std)).encode())
        for name, tensor in self.net.state_dict().items():
            if not name.startswith(self.head_name + "."):
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def train(self, mode: bool = True):
        """Keep a frozen backbone (BatchNorm statistics, dropout) in eval mode; only the head trains."""
        super().train(mode)
        if mode and self.hparams.freeze == "backbone":
            self.net.eval()
            self.head.train()
        return self

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """A checkpoint written before temperature scaling has no ``temperature``: it loads with T = 1 (its
        outputs unchanged), also through Lightning's strict loading on resume."""
        default_temperature(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    # ----------------------------------------------------------------- steps
    def _step(self, batch: dict, stage: str, metrics: MetricCollection) -> tuple[torch.Tensor, torch.Tensor]:
        # batches carry images, or the frozen backbone's cached features (see MaskDataModule.use_backbone_features)
        logits = self(batch["image"]) if "image" in batch else self.head_logits(batch["features"])
        if stage != "train" and not torch.isfinite(logits).all():  # training losses: see DivergenceGuard
            raise DivergedError(f"The model's outputs are NaN or infinite at epoch {self.current_epoch} (stage {stage}): "
                                "the weights diverged. Try a lower model.optimizer.lr or trainer.gradient_clip_val=1.0.")
        loss = F.cross_entropy(logits, batch["label"])
        metrics.update(logits, batch["label"])
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=stage != "test",
                 batch_size=len(logits), sync_dist=True)
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage == "val", batch_size=len(logits))
        return loss, logits

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train", self.train_metrics)[0]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val", self.val_metrics)

    def on_train_epoch_start(self) -> None:
        self.train()  # re-apply the frozen-backbone eval mode however the loop set modes
        if self._resumed_rng is not None:  # first epoch after a resume: continue the random streams exactly
            set_rng_states(self._resumed_rng)
            self._resumed_rng = None

    # ------------------------------------------------------------- resume
    # Lightning's checkpoint restores weights, optimiser, loops and callbacks, but not the global random
    # streams (sampler order, augmentation, dropout) nor torchmetrics states; both are kept here so that a
    # run resumed from last.ckpt ends exactly as the same run never interrupted.
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["maskdet"] = {
            "head": self.head_name,  # where preflight finds the output layer when it checks a checkpoint
            "trained_on": self._provenance(),  # predict/export warn when a demonstration model meets real photos
            "rng": rng_states(),
            "val_acc_best": float(self.val_acc_best.max_value),
            "val_metrics": {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("val/")},
        }

    def _provenance(self) -> dict | None:
        """What the model was trained on: the data layout, its root and size, and whether it was maskdet's
        embedded (procedurally drawn) dataset."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        settings, data = getattr(datamodule, "settings", None), getattr(datamodule, "data", None)
        if settings is None or data is None:
            return None
        source = settings.source_name
        return {"source": source, "root": str(data.root), "images": int(len(data.used)),
                "synthetic": source == "synthetic"}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("maskdet", {})
        self._resumed_rng = state.get("rng")
        self.resumed_val_metrics = state.get("val_metrics", {})
        if state.get("val_acc_best", float("-inf")) > float("-inf"):
            self.val_acc_best.update(torch.tensor(state["val_acc_best"]))

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:  # the sanity check must not count as a best epoch
            self.val_acc_best(self.val_metrics["acc"].compute())
            self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True)

    def on_test_epoch_start(self) -> None:
        self.test_outputs = []

    def test_step(self, batch: dict, batch_idx: int) -> None:
        _, logits = self._step(batch, "test", self.test_metrics)
        self.test_outputs.append((batch["row"].cpu(), logits.float().softmax(1).cpu()))

    def test_predictions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Index rows and class probabilities of every test image seen by the last ``trainer.test``,
        gathered from every process under DDP (call it on all ranks)."""
        rows, probs = (torch.cat(t) for t in zip(*self.test_outputs))
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            parts = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(parts, (rows, probs))
            rows, probs = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
            order = rows.argsort()
            rows, probs = rows[order], probs[order]
        return rows, probs

    # ------------------------------------------------------------- optimiser
    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params) if self.optimizer_factory else torch.optim.Adam(params, lr=1e-3)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss", "interval": "epoch"}}


def rng_states() -> dict:
    """The global random streams (torch, CUDA, numpy, Python) as tensors and lists, so that checkpoints
    stay loadable with ``torch.load(weights_only=True)``."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), gauss))
    version, state, gauss = states["python"]
    random.setstate((version, tuple(state), gauss))
