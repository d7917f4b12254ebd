"""Looking inside a trained model: Grad-CAM, feature maps, filters, weight histograms, galleries,
reliability diagram. Images are shown as the model saw them before normalisation (their own colours).

Grad-CAM is a few lines of hook code here rather than a dependency: the maintained packages
(grad-cam, torchcam) bring their own image stacks (OpenCV) for what is one forward hook, one gradient
and a weighted sum, and maskdet needs only the plain method on the block chosen by ``find_target_layer``.
"""

from __future__ import annotations

import difflib
import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from maskdet.errors import ConfigError  # noqa: E402
from maskdet.evaluation.metrics import ECE_BINS, expected_calibration_error
from maskdet.inference import predict_split
from maskdet.writing import save_figure, write_text


def find_target_layer(model: nn.Module, image_size: int, name: str | None = None) -> str:
    """The last module outside the classification head producing a spatial (B x C x H x W, H > 1) output:
    the last convolutional block (``layer4`` in a ResNet, ``features`` in MobileNetV2 and SqueezeNet,
    ``conv_layer`` in the custom CNN)."""
    modules = dict(model.named_modules())
    if name is not None:
        if name not in modules:
            close = difflib.get_close_matches(name, [n for n in modules if n], n=5, cutoff=0.6)
            raise ConfigError(f"explain.target_layer={name!r} is not a layer of this model"
                              + (f"; similar names: {', '.join(close)}" if close else "") + ".")
        return name
    order: list[str] = []
    hooks = [m.register_forward_hook(lambda mod, args, out, n=n: order.append(n)
                                     if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[-1] > 1 else None)
             for n, m in modules.items() if n]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    head = getattr(model, "head", None)  # MaskClassifier's declared head (a conv in SqueezeNet's): not the backbone
    in_head = set(head.modules()) if isinstance(head, nn.Module) else set()
    convs = [n for n in order
             if modules[n] not in in_head and any(isinstance(m, nn.Conv2d) for m in modules[n].modules())]
    if not convs:
        raise ConfigError("This model has no convolutional layer with a spatial output, so Grad-CAM and feature maps "
                          "do not apply; the galleries, reliability diagram and weight histograms are still written.")
    return convs[-1]


class GradCAM:
    """Class activation maps: ReLU(sum_k mean(dy_c/dA_k) * A_k) at ``layer``, upsampled to the image."""

    def __init__(self, model: nn.Module, layer: str):
        self.model, self.layer = model, dict(model.named_modules())[layer]

    def __call__(self, images: torch.Tensor, target: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Heat maps in [0, 1] (B x H x W) for ``target`` classes (default: the predicted ones), and the logits."""
        captured = {}

        def keep(module, args, output):
            output.retain_grad()
            captured["a"] = output

        handle = self.layer.register_forward_hook(keep)
        try:
            self.model.zero_grad(set_to_none=True)
            # callable from inside Lightning's test loop, which runs under inference mode
            with torch.inference_mode(False), torch.enable_grad():
                images = images.detach().clone().requires_grad_(True)
                logits = self.model(images)
                target = logits.argmax(1) if target is None else target
                logits.gather(1, target.view(-1, 1)).sum().backward()
        finally:
            handle.remove()
        activations, gradients = captured["a"], captured["a"].grad
        cam = F.relu((gradients.mean((2, 3), keepdim=True) * activations).sum(1, keepdim=True))
        cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        peak = cam.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
        return (cam / peak).detach(), logits.detach()


def _suptitle(fig: plt.Figure, text: str, fontsize: float = 9) -> None:
    """A figure title wrapped to the figure's width (a narrow grid would cut a long title at both edges);
    about 0.55 em per character, measured on DejaVu Sans."""
    characters = max(20, int(fig.get_figwidth() * 72 / (0.55 * fontsize)))
    fig.suptitle(textwrap.fill(text, characters), fontsize=fontsize)


def right_and_wrong_per_class(labels: torch.Tensor, predicted: torch.Tensor, num_classes: int,
                              per_class: int) -> list[tuple[list[int], list[int]]]:
    """Per class, the first ``per_class`` correctly and the first ``per_class`` wrongly predicted images
    of that class (indices, fewer where the split has fewer)."""
    return [(torch.nonzero((labels == c) & (predicted == c)).flatten()[:per_class].tolist(),
             torch.nonzero((labels == c) & (predicted != c)).flatten()[:per_class].tolist())
            for c in range(num_classes)]


def gradcam_grid(model, layer: str, images: torch.Tensor, labels: torch.Tensor, predicted: torch.Tensor,
                 class_names: Sequence[str], per_class: int, path: Path, side: int = 96) -> plt.Figure:
    """One row per class: up to ``per_class`` correct and ``per_class`` misclassified images (of the
    ``predicted`` classes) with their Grad-CAM, computed for those images only, drawn as one mosaic."""
    rows = right_and_wrong_per_class(labels, predicted, len(class_names), per_class)
    chosen = [i for right, wrong in rows for i in right + wrong]
    heat, logits = GradCAM(model, layer)(images[chosen].to(next(model.parameters()).device))
    confidence = dict(zip(chosen, logits.softmax(1).amax(1).tolist()))
    # the heat map over the image at 45 % opacity, as imshow(alpha=0.45) would blend it
    jet = torch.from_numpy(matplotlib.colormaps["jet"](heat.cpu().numpy())[..., :3]).permute(0, 3, 1, 2).float()
    blended = dict(zip(chosen, _fit_tiles(0.55 * images[chosen].float().cpu().clamp(0, 1) + 0.45 * jet, side)))
    cols = 2 * per_class
    tiles = np.ones((len(rows) * cols, side, side, 3), dtype=np.float32)
    captions = [""] * len(tiles)
    for r, (name, (right, wrong)) in enumerate(zip(class_names, rows)):
        for k in range(cols):
            pool, j = (right, k) if k < per_class else (wrong, k - per_class)
            if j < len(pool):
                i = pool[j]
                verdict = "ok" if k < per_class else f"as {class_names[predicted[i]]}"
                tiles[r * cols + k] = blended[i]
                captions[r * cols + k] = f"{name}\n{verdict} {confidence[i]:.2f}"
    fig, _ = _mosaic_figure(tiles, captions, cols, top=30, gap=8, side_gap=60)  # room for long class names
    _suptitle(fig, f"Grad-CAM at {layer}: correct (left) and misclassified (right) per class")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    return fig


def _fit_tiles(images: torch.Tensor, side: int, mode: str = "bilinear") -> np.ndarray:
    """Images (N x 3 x H x W, values in 0..1) as N x ``side`` x ``side`` x 3 tiles: the longer side scaled to
    ``side``, the shape kept, white around. ``mode="nearest"`` keeps small maps' cells crisp and their colours
    exact, as imshow shows a map enlarged more than 3 times."""
    n, (height, width) = len(images), images.shape[-2:]
    tiles = np.ones((n, side, side, 3), dtype=np.float32)
    if n:
        scale = side / max(height, width)
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        smooth = {"antialias": True, "align_corners": False} if mode == "bilinear" else {}
        resized = F.interpolate(images.float().cpu(), size=size, mode=mode, **smooth).clamp(0, 1)
        top, left = (side - size[0]) // 2, (side - size[1]) // 2
        tiles[:, top:top + size[0], left:left + size[1]] = resized.permute(0, 2, 3, 1).numpy()
    return tiles


def _mosaic_figure(tiles: np.ndarray, captions: Sequence[str], columns: int, *, top: int, gap: int,
                   side_gap: int | None = None, centred: bool = True, pixels_per_inch: float = 85,
                   nearest: bool = False) -> tuple[plt.Figure, plt.Axes]:
    """``tiles`` as one mosaic in one axes of a figure sized to it (plus room for a title), each tile with its
    caption (up to two lines) above it, centred or from its left edge."""
    canvas = _mosaic(tiles, columns, gap, top, side_gap)
    fig, ax = plt.subplots(figsize=(canvas.shape[1] / pixels_per_inch, canvas.shape[0] / pixels_per_inch + 0.5))
    ax.imshow(canvas, interpolation="nearest" if nearest else "antialiased")
    ax.axis("off")
    side_h, side_w = tiles.shape[1:3]
    cell_w = side_w + (gap if side_gap is None else side_gap)
    for i, caption in enumerate(captions):
        if caption:
            r, c = divmod(i, columns)
            ax.text(c * cell_w + (side_w / 2 if centred else 0), r * (side_h + top + gap) + top - 3,
                    caption.replace("$", r"\$"), ha="center" if centred else "left", va="bottom",
                    fontsize=7)  # class names from folder names: "$" escaped, no mathtext
    return fig, ax


def _mosaic(tiles: np.ndarray, columns: int, gap: int, top: int = 0, side_gap: int | None = None) -> np.ndarray:
    """``tiles`` (N x H x W x 3, values in 0..1) laid out in rows of ``columns`` on white, ``gap`` pixels
    apart (``side_gap`` between columns, when given), with ``top`` free pixels above each tile for its caption. One picture in one axes: a subplot per
    tile made a gallery of 24 cost about a second of matplotlib's layout."""
    n, height, width = tiles.shape[:3]
    rows = max(1, -(-n // columns))
    cell_h, cell_w = height + top + gap, width + (gap if side_gap is None else side_gap)
    canvas = np.ones((rows * cell_h, columns * cell_w, 3), dtype=np.float32)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        canvas[r * cell_h + top:r * cell_h + top + height, c * cell_w:c * cell_w + width] = tile
    return canvas


def gallery(images: torch.Tensor, predictions: pd.DataFrame, title: str, path: Path, columns: int = 6,
            side: int = 96) -> plt.Figure:
    """Images captioned with true class, predicted class and confidence, each shown at ``side`` px."""
    n = len(predictions)
    captions = [f"true {row['label']}\npred {row['prediction']} {row['confidence']:.2f}"
                for _, row in predictions.iterrows()]
    tiles = _fit_tiles(images[:n], side) if n else np.ones((columns, side, side, 3), dtype=np.float32)
    fig, ax = _mosaic_figure(tiles, captions, columns, top=30, gap=8, side_gap=60)  # room for long class names
    if n == 0:
        ax.text(0.5, 0.5, "none", fontsize=10, transform=ax.transAxes, ha="center")
    _suptitle(fig, title)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    return fig


def reliability_diagram(predictions: pd.DataFrame, path: Path, bins: int = ECE_BINS, title: str | None = None) -> plt.Figure:
    """Accuracy per confidence bin against the diagonal, with the ECE of the same bins in the title (after
    ``title``, when given: calibration draws one before and one after temperature scaling)."""
    confidence = predictions["confidence"].to_numpy()
    correct = (predictions["label"] == predictions["prediction"]).to_numpy()
    ece = float(expected_calibration_error(confidence, correct, bins)[0])
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    accuracy = [correct[which == b].mean() if (which == b).any() else np.nan for b in range(bins)]
    counts = [(which == b).sum() for b in range(bins)]
    fig, (ax, below) = plt.subplots(2, 1, figsize=(5, 5.2), sharex=True, height_ratios=(4, 1))
    ax.bar(edges[:-1], accuracy, width=1 / bins, align="edge", edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(f"Reliability diagram{f' {title}' if title else ''} (test split, {len(confidence):,} images)\n"
                 f"ECE {ece:.3f}: {bins} equal-width bins", fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    below.bar(edges[:-1], counts, width=1 / bins, align="edge", edgecolor="black", color="grey")
    below.set_ylabel("images", fontsize=8)
    below.set_xlabel("confidence")
    below.set_xlim(0, 1)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    return fig


def first_layer_filters(model: nn.Module, path: Path) -> plt.Figure | None:
    """The filters of the first convolution on the RGB input, each scaled to its own range."""
    name, conv = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.in_channels == 3),
                      (None, None))
    if conv is None:
        return None
    weights = conv.weight.detach().cpu()
    weights = (weights - weights.amin((1, 2, 3), keepdim=True)) / (weights.amax((1, 2, 3), keepdim=True)
                                                                   - weights.amin((1, 2, 3), keepdim=True)).clamp_min(1e-12)
    columns = 8
    rows = (len(weights) + columns - 1) // columns
    fig, ax = plt.subplots(figsize=(columns * 0.9, rows * 0.9 + 0.4))
    side = weights.shape[-1]
    ax.imshow(_mosaic(weights.permute(0, 2, 3, 1).numpy(), columns, gap=max(1, side // 5)), interpolation="nearest")
    ax.axis("off")
    _suptitle(fig, f"First-layer filters ({name}): {conv.out_channels} filters of "
                   f"{conv.kernel_size[0]}x{conv.kernel_size[1]} on RGB, each scaled to its own range")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    return fig


def feature_maps(model: nn.Module, image: torch.Tensor, layers: Sequence[str], path: Path, channels: int = 16) -> plt.Figure:
    """The first ``channels`` activation maps of each layer in ``layers`` for one image."""
    modules = dict(model.named_modules())
    missing = [n for n in layers if n not in modules]
    if missing:
        raise ConfigError(f"explain.feature_layers: {missing} are not layers of this model.")
    captured = {}
    hooks = [modules[n].register_forward_hook(lambda m, a, out, n=n: captured.__setitem__(n, out.detach())) for n in layers]
    try:
        with torch.no_grad():
            model(image[None])
    finally:
        for h in hooks:
            h.remove()
    side = 48
    tiles = np.ones((len(layers) * (channels + 1), side, side, 3), dtype=np.float32)
    captions = [""] * len(tiles)
    viridis = matplotlib.colormaps["viridis"]
    for r, name in enumerate(layers):
        first = r * (channels + 1)
        tiles[first], captions[first] = _fit_tiles(image[None].cpu().clamp(0, 1), side)[0], "input"
        maps = captured[name][0].float().cpu()
        if maps.dim() != 3:
            captions[first + 1] = f"{name}: not a spatial output"
            continue
        maps = maps[:channels]
        low, high = maps.amin((1, 2), keepdim=True), maps.amax((1, 2), keepdim=True)
        scaled = ((maps - low) / (high - low).clamp_min(1e-12)).numpy()  # each map on its own range, as imshow
        coloured = torch.from_numpy(viridis(scaled)[..., :3]).permute(0, 3, 1, 2).float()
        tiles[first + 1:first + 1 + len(maps)] = _fit_tiles(coloured, side, mode="nearest")
        captions[first + 1] = name
    fig, _ = _mosaic_figure(tiles, captions, channels + 1, top=14, gap=4, centred=False, pixels_per_inch=60,
                            nearest=True)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    return fig


def weight_histograms(model: nn.Module, path: Path) -> plt.Figure:
    """One histogram of weight values per convolution and linear layer (each on its own scale)."""
    layers = [(n, m.weight.detach().cpu().flatten().numpy()) for n, m in model.named_modules()
              if isinstance(m, nn.Conv2d | nn.Linear)]
    columns = 4
    rows = (len(layers) + columns - 1) // columns
    # a fixed grid of cells sized for the labels: tight_layout measured every text of 50+ panels (MobileNetV2:
    # 5.5 s of a 6 s figure) to arrive at about the same spacing
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 2.3 * rows), squeeze=False,
                             gridspec_kw={"left": 0.06, "right": 0.98, "bottom": 0.6 / (2.3 * rows),
                                          "top": 1 - 0.35 / (2.3 * rows), "wspace": 0.35, "hspace": 0.75})
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, weights) in zip(axes.flat, layers):
        ax.axis("on")
        ax.hist(weights, bins=50, color="tab:blue")
        ax.set_title(f"{name} ({weights.size:,} weights)", fontsize=8)
        ax.set_xlabel("weight value", fontsize=8)
        ax.set_ylabel("count", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.locator_params(axis="x", nbins=5)  # long tick labels (-0.015) would run into each other
    save_figure(fig, path, dpi=90)
    return fig


def write_explanations(model, datamodule, output_dir: str | Path, *, per_class: int, low_confidence: float,
                       gallery_size: int, target_layer: str | None, feature_layers: Sequence[str] | None,
                       tensorboard=None, step: int = 0) -> dict:
    """Every picture of the explain step into ``output_dir`` (and TensorBoard's image/histogram tabs).
    The settings have no defaults here: they are conf/explanations/default.yaml's, for both commands."""
    from maskdet.evaluation.reports import predictions_frame

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    images, labels, rows, probs = predict_split(model, datamodule)
    names = list(datamodule.class_names)
    predictions = predictions_frame(datamodule.index, rows.numpy(), probs.numpy(), names)
    figures, notes = {}, []
    wrong = np.flatnonzero((predictions["label"] != predictions["prediction"]).to_numpy())
    unsure = np.flatnonzero((predictions["confidence"] < low_confidence).to_numpy())
    for name, picked, title in (
        ("misclassified", wrong, f"misclassified test images ({len(wrong)} of {len(predictions)})"),
        ("low_confidence", unsure, f"test images predicted with confidence < {low_confidence} ({len(unsure)})"),
    ):
        if len(picked) > gallery_size:
            notes.append(f"{name}: showing {gallery_size} of {len(picked)} images (explain.gallery_size)")
        picked = picked[:gallery_size]
        figures[name] = gallery(images[picked], predictions.iloc[picked], title, output_dir / f"{name}.png")
    figures["reliability"] = reliability_diagram(predictions, output_dir / "reliability.png")
    figures["weight_histograms"] = weight_histograms(model, output_dir / "weight_histograms.png")
    filters = first_layer_filters(model, output_dir / "first_layer_filters.png")
    if filters is not None:
        figures["first_layer_filters"] = filters
    try:
        layer = find_target_layer(model, images.shape[-1], target_layer)
    except ConfigError as err:
        if target_layer is not None:
            raise
        notes.append(str(err))
        layer = None
    if layer is not None:
        available = [int((labels == c).sum()) for c in range(len(names))]
        if any(per_class > n for n in available):
            notes.append(f"explain.per_class={per_class}: some classes have fewer test images ({dict(zip(names, available))}); showing what there is")
        figures["gradcam"] = gradcam_grid(model, layer, images, labels, probs.argmax(1), names, per_class,
                                          output_dir / "gradcam.png")
        device = next(model.parameters()).device
        first_conv = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
        layers = list(feature_layers) if feature_layers else [first_conv, layer]
        figures["feature_maps"] = feature_maps(model, images[0].to(device), layers, output_dir / "feature_maps.png")
    if tensorboard is not None:
        from maskdet.evaluation.holdout import tensorboard_image

        for name in figures:  # the saved PNG, as for the test reports, rather than add_figure's 100-dpi render
            tensorboard.add_image(f"explain/{name}", tensorboard_image(output_dir / f"{name}.png"), step,
                                  dataformats="HWC")
        for name, param in model.named_parameters():
            tensorboard.add_histogram(f"weights/{name}", param.detach().cpu(), global_step=step)
        tensorboard.flush()
    for fig in figures.values():
        plt.close(fig)
    write_text(output_dir / "notes.txt", "\n".join(notes) + ("\n" if notes else ""))
    return {"target_layer": layer, "pictures": sorted(f"{n}.png" for n in figures), "notes": notes}
