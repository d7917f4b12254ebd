"""Robustness per group: the test split under a suite of corruptions, each at severities 1-5.

Every corruption is a function ``(images, severity, generator) -> images`` on float images B x C x H x W in
[0, 1] (on the model's device, batch by batch), deterministic given the ``torch.Generator``; the generator is
seeded from ``seed`` and the (corruption, severity) pair, so a report is reproducible and does not depend on
which other corruptions ran. Sizes (blur sigma, the occluded band, the downscaled size) are fractions of the
image size, so a severity means the same at 32 px and at 224 px.

Where a maintained implementation fits, it is used (torchvision's ``transforms.v2.functional``):
``gaussian_blur``, ``jpeg``, ``adjust_brightness``, ``adjust_contrast`` and ``resize``. Written by hand:

- ``noise``: torchvision's ``gaussian_noise`` draws from the global random state and takes no generator, so
  it could only be made deterministic per (corruption, severity) by reseeding the process' RNG; one
  ``torch.randn(generator=...)`` line keeps the global state untouched.
- ``occlude_lower_face`` and ``occlude_eyes``: no library has face-region occlusions (torchvision's
  ``RandomErasing`` erases a random box, not a fixed region); they fill a band of the aligned face crop with
  mid grey, like a scarf or hand over mouth and chin, or sunglasses / a visor over the eyes.

Figures: accuracy per corruption and severity (and clean), overall and per demographic group (the bias
audit's attributes and group columns), with Wilson 95 % intervals. **Interaction test** (does a group gap
widen under a corruption?): per attribute, the two largest ranked groups g1 (largest) and g2 (n >=
``min_group_size``, not unknown); the gap acc(g1) - acc(g2) under the corruption at its *worst requested
severity* minus the clean gap. Its interval is a paired percentile bootstrap (``n_bootstrap`` resamples of the
test images within each group, the same resample for the clean and the corrupted predictions); its p-value is
two-sided from the bootstrap distribution (twice the smaller share of resamples on either side of 0, with the
+1 correction). One family per attribute: that attribute's tests across the corruptions, Holm-corrected.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from torchvision.transforms.v2 import functional as F  # noqa: E402

from maskdet.data.demographics import UNKNOWN  # noqa: E402
from maskdet.errors import ConfigError  # noqa: E402
from maskdet.evaluation.bias import with_group_columns  # noqa: E402
from maskdet.evaluation.options import AUDITABLE_ATTRIBUTES, BIAS  # noqa: E402
from maskdet.evaluation.statistics import adjust_p_values, wilson_interval  # noqa: E402
from maskdet.jsonfile import write_json  # noqa: E402
from maskdet.writing import md, plot_text, save_figure, write_csv, write_text  # noqa: E402

log = logging.getLogger("maskdet.robustness")

SEVERITIES = (1, 2, 3, 4, 5)
GREY = 0.5


def _size(images: torch.Tensor) -> int:
    return min(images.shape[-2:])


def blur(images: torch.Tensor, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
    sigma = _size(images) * (0.015, 0.03, 0.045, 0.06, 0.09)[severity - 1]
    kernel = min(2 * math.ceil(3 * sigma) + 1, 2 * ((_size(images) - 1) // 2) + 1)
    return F.gaussian_blur(images, kernel_size=[kernel, kernel], sigma=[sigma, sigma])


def noise(images: torch.Tensor, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
    # by hand: torchvision's gaussian_noise takes no generator (module docstring)
    sigma = (0.04, 0.08, 0.12, 0.18, 0.26)[severity - 1]
    drawn = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    return (images + sigma * drawn).clamp_(0, 1)


def jpeg(images: torch.Tensor, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
    quality = (80, 60, 40, 20, 10)[severity - 1]
    # torchvision's encoder is run on the CPU (its CUDA path needs nvjpeg, which not every build has)
    as_bytes = images.mul(255).round_().to(torch.uint8).cpu()
    return F.jpeg(as_bytes, quality).to(images.device).to(images.dtype).div_(255)


def low_light(images: torch.Tensor, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
    return F.adjust_brightness(images, (0.7, 0.5, 0.35, 0.2, 0.1)[severity - 1])


def contrast(images: torch.Tensor, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
    return F.adjust_contrast(images, (0.75, 0.5, 0.35, 0.2, 0.1)[severity - 1])


def downscale(images: torch.Tensor, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
    h, w = images.shape[-2:]
    f = (0.75, 0.5, 0.375, 0.25, 0.125)[severity - 1]
    small = F.resize(images, [max(2, round(h * f)), max(2, round(w * f))], antialias=True)
    return F.resize(small, [h, w], antialias=True).clamp_(0, 1)


def _band(images: torch.Tensor, top: float, bottom: float) -> torch.Tensor:
    # by hand: a fixed face region, which no library corruption covers (module docstring)
    h = images.shape[-2]
    out = images.clone()
    out[..., max(0, round(h * top)):min(h, round(h * bottom)), :] = GREY
    return out


def occlude_lower_face(images: torch.Tensor, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
    return _band(images, 1 - (0.15, 0.25, 0.35, 0.45, 0.55)[severity - 1], 1.0)


def occlude_eyes(images: torch.Tensor, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
    half = (0.04, 0.06, 0.08, 0.1, 0.125)[severity - 1]
    return _band(images, 0.4 - half, 0.4 + half)


CORRUPTIONS: dict[str, Callable[[torch.Tensor, int, torch.Generator | None], torch.Tensor]] = {
    "blur": blur, "noise": noise, "jpeg": jpeg, "low_light": low_light, "contrast": contrast,
    "downscale": downscale, "occlude_lower_face": occlude_lower_face, "occlude_eyes": occlude_eyes,
}


def corruption_seed(seed: int, corruption: str, severity: int) -> int:
    """The generator's seed for one (corruption, severity): stable across processes and runs."""
    return (int(seed) * 1_000_003 + zlib.crc32(corruption.encode()) * 7 + int(severity)) % (2**63)


def check_options(corruptions=None, severities=None, attributes=None, n_bootstrap=None, min_group_size=None,
                  alpha=None, where: str = "robustness.") -> None:
    """Refuse a setting before any work, naming the key and what it accepts."""
    def is_list(v) -> bool:
        return isinstance(v, list | tuple) or type(v).__name__ == "ListConfig"

    if corruptions is not None:
        listed = [str(c) for c in corruptions] if is_list(corruptions) else None
        unknown = [c for c in listed if c not in CORRUPTIONS] if listed is not None else [str(corruptions)]
        if unknown or not listed:
            raise ConfigError(f"{where}corruptions={listed if listed is not None else corruptions!r}: "
                              f"{', '.join(unknown) or 'an empty list'} is not a corruption maskdet knows; use a "
                              f"non-empty list of any of {', '.join(CORRUPTIONS)} "
                              f"(e.g. {where}corruptions=[blur,occlude_lower_face]).")
    if severities is not None:
        ok = is_list(severities) and len(severities) > 0 and all(
            isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= 5 for s in severities)
        if not ok:
            raise ConfigError(f"{where}severities={severities!r} must be a non-empty list of whole numbers from 1 "
                              f"to 5 (e.g. {where}severities=[1,3,5]).")
    if attributes is not None:
        bad = [str(a) for a in attributes if a not in AUDITABLE_ATTRIBUTES] if is_list(attributes) else [str(attributes)]
        if bad:
            raise ConfigError(f"{where}attributes: {', '.join(bad)} is not an attribute the audit knows: use a list "
                              f"of any of {', '.join(AUDITABLE_ATTRIBUTES)}.")
    for key, value in (("n_bootstrap", n_bootstrap), ("min_group_size", min_group_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{where}{key}={value!r} must be a whole number of at least 1.")
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha < 1):
        raise ConfigError(f"{where}alpha={alpha!r} must be a number between 0 and 1 (e.g. 0.05).")


# ------------------------------------------------------------------------------------------ running

@torch.no_grad()
def corrupted_correctness(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                          corruptions: Sequence[str], severities: Sequence[int], seed: int = 0,
                          batch_size: int = 256, device: torch.device | str | None = None) -> dict:
    """{(corruption, severity): bool array, one per image: the prediction on the corrupted image is right};
    ("clean", 0) for the images as they are. ``images``: float in [0, 1], or uint8 as decoded (made float
    batch by batch, so a large split is held at a quarter of the memory), on any device."""
    from maskdet.data.augment import to_float

    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()

    def correct(transform) -> np.ndarray:
        hits = []
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size].to(device)
            x = to_float(x) if x.dtype == torch.uint8 else x
            pred = model(transform(x)).float().argmax(1).cpu()
            hits.append(pred == labels[i:i + batch_size].cpu())
        return torch.cat(hits).numpy()

    out = {("clean", 0): correct(lambda x: x)}
    for name in corruptions:
        for severity in severities:
            generator = torch.Generator(device=device).manual_seed(corruption_seed(seed, name, severity))
            out[(name, int(severity))] = correct(lambda x, n=name, s=int(severity), g=generator: CORRUPTIONS[n](x, s, g))
    return out


# ------------------------------------------------------------------------------------------ statistics

def _ranked_pair(groups: pd.Series, min_group_size: int) -> tuple[str, str] | None:
    counts = groups[groups != UNKNOWN].value_counts()
    counts = counts[counts >= min_group_size]
    if len(counts) < 2:
        return None
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))  # largest first, ties by name
    return str(ordered[0][0]), str(ordered[1][0])


def interaction_test(clean: np.ndarray, corrupted: np.ndarray, in_g1: np.ndarray, in_g2: np.ndarray,
                     n_bootstrap: int = BIAS.n_bootstrap, rng: np.random.Generator | None = None) -> dict:
    """(acc_c(g1) - acc_c(g2)) - (acc(g1) - acc(g2)) with a paired percentile bootstrap 95 % interval and a
    two-sided bootstrap p-value; images resampled within each group, the same resample for both conditions."""
    rng = rng if rng is not None else np.random.default_rng(0)
    clean, corrupted = np.asarray(clean, dtype=float), np.asarray(corrupted, dtype=float)
    a, b = np.flatnonzero(in_g1), np.flatnonzero(in_g2)

    def widening(ia, ib):
        return (corrupted[ia].mean(-1) - corrupted[ib].mean(-1)) - (clean[ia].mean(-1) - clean[ib].mean(-1))

    estimate = float(widening(a, b))
    boots = widening(a[rng.integers(0, len(a), (n_bootstrap, len(a)))], b[rng.integers(0, len(b), (n_bootstrap, len(b)))])
    low, high = np.percentile(boots, [2.5, 97.5])
    p = min(1.0, 2 * min((1 + (boots <= 0).sum()) / (n_bootstrap + 1), (1 + (boots >= 0).sum()) / (n_bootstrap + 1)))
    return {"interaction": estimate, "interaction_low": float(low), "interaction_high": float(high),
            "p_value_raw": float(p),
            "clean_gap": float(clean[a].mean() - clean[b].mean()),
            "corrupted_gap": float(corrupted[a].mean() - corrupted[b].mean())}


def robustness_statistics(groups: pd.DataFrame, correctness: dict, *, attributes: Sequence[str] = BIAS.attributes,
                          min_group_size: int = BIAS.min_group_size, n_bootstrap: int = BIAS.n_bootstrap, seed: int = BIAS.seed, alpha: float = BIAS.alpha) -> dict:
    """The report's figures from per-image correctness (``corrupted_correctness``) and the test images'
    demographic columns ``groups`` (one row per image, the order of the correctness arrays)."""
    frame = with_group_columns(groups.reset_index(drop=True))
    rows = []
    for (name, severity), hits in correctness.items():
        hits = np.asarray(hits, dtype=bool)
        scopes = [("overall", "all", np.ones(len(hits), bool))]
        for attribute in attributes:
            if attribute in frame and not (frame[attribute] == UNKNOWN).all():
                scopes += [(attribute, str(g), (frame[attribute] == g).to_numpy()) for g in sorted(set(frame[attribute]))]
        for attribute, group, mask in scopes:
            n, k = int(mask.sum()), int(hits[mask].sum())
            low, high = wilson_interval(k, n)
            rows.append({"corruption": name, "severity": int(severity), "attribute": attribute, "group": group,
                         "n": n, "correct": k, "accuracy": k / n if n else math.nan,
                         "accuracy_low": low, "accuracy_high": high})
    corrupted = [key for key in correctness if key != ("clean", 0)]
    worst = {}
    for name, severity in corrupted:
        worst[name] = max(worst.get(name, 0), int(severity))
    rng = np.random.default_rng(seed)
    tests, notes = [], []
    for attribute in attributes:
        if attribute not in frame or (frame[attribute] == UNKNOWN).all():
            notes.append(f"{attribute}: no demographic information, no interaction test.")
            continue
        pair = _ranked_pair(frame[attribute], min_group_size)
        if pair is None:
            notes.append(f"{attribute}: fewer than two known groups of at least {min_group_size} images, "
                         "no interaction test.")
            continue
        g1, g2 = pair
        in1, in2 = (frame[attribute] == g1).to_numpy(), (frame[attribute] == g2).to_numpy()
        family = []
        for name, severity in worst.items():
            result = interaction_test(correctness[("clean", 0)], correctness[(name, severity)], in1, in2, n_bootstrap, rng)
            family.append({"attribute": attribute, "group_1": g1, "group_2": g2, "n_1": int(in1.sum()),
                           "n_2": int(in2.sum()), "corruption": name, "severity": severity, **result})
        for test, adjusted in zip(family, adjust_p_values([t["p_value_raw"] for t in family], "holm")):
            test.update(p_value=float(adjusted), significant=bool(adjusted < alpha), family_size=len(family))
        tests += family
    return {"rows": rows, "interaction_tests": tests, "notes": notes, "n_bootstrap": n_bootstrap, "seed": seed,
            "alpha": alpha, "min_group_size": min_group_size, "test_images": len(frame),
            "corruptions": list(worst), "severities": sorted({int(s) for _, s in corrupted}),
            "interval": "Wilson 95 % (pointwise) for every accuracy",
            "interaction": "gap acc(g1) - acc(g2) under the corruption at its worst requested severity minus the clean "
                           "gap; g1, g2: the attribute's two largest ranked groups; paired percentile bootstrap 95 % "
                           f"interval ({n_bootstrap} resamples of the images within each group, the same for clean "
                           "and corrupted); two-sided bootstrap p-value; Holm across corruptions, one family per "
                           "attribute"}


def robustness_report(model: torch.nn.Module, datamodule, *, corruptions: Sequence[str] = tuple(CORRUPTIONS),
                      severities: Sequence[int] = SEVERITIES, attributes: Sequence[str] = BIAS.attributes,
                      min_group_size: int = BIAS.min_group_size, n_bootstrap: int = BIAS.n_bootstrap, seed: int = BIAS.seed, alpha: float = BIAS.alpha,
                      device: torch.device | str | None = None, split: str = "test") -> dict:
    """Run ``split`` of ``datamodule`` clean and under every (corruption, severity); the report dict."""
    from maskdet.evaluation.reports import predictions_frame

    check_options(corruptions, severities, attributes, n_bootstrap, min_group_size, alpha)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model = model.to(device)
    images, labels, rows = [], [], []
    for batch in datamodule.image_dataloader(split):
        images.append(batch["image"].cpu())  # uint8: made float batch by batch
        labels.append(batch["label"].cpu())
        rows.append(batch["row"].cpu())
    images, labels, rows = torch.cat(images), torch.cat(labels), torch.cat(rows).numpy()
    names = list(datamodule.class_names)
    groups = predictions_frame(datamodule.index, rows, np.eye(len(names))[labels.numpy()], names)
    correctness = corrupted_correctness(model, images, labels, list(corruptions), [int(s) for s in severities],
                                        seed, batch_size=int(getattr(datamodule.settings, "eval_batch_size", 256)),
                                        device=device)
    report = robustness_statistics(groups, correctness, attributes=attributes, min_group_size=min_group_size,
                                   n_bootstrap=n_bootstrap, seed=seed, alpha=alpha)
    report["per_image"] = {f"{c}@{s}": v for (c, s), v in correctness.items()}
    return report


# ------------------------------------------------------------------------------------------ writing

def _num(v: float) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def format_markdown(report: dict) -> str:
    lines = ["# Robustness per group (test split under corruptions)", "",
             f"{report['test_images']} test images, each corruption at severities "
             f"{', '.join(map(str, report['severities']))} (1 mild - 5 severe), deterministic from seed "
             f"{report['seed']}. Accuracy intervals: {report['interval']}. Occlusions are hand-written (grey band over "
             "the lower face / the eyes); the other corruptions are torchvision's, except the Gaussian noise, drawn "
             "from a seeded generator.", "",
             f"**Interaction test** (does a group gap widen?): {report['interaction']}. Level {report['alpha']:g}; "
             f"groups under {report['min_group_size']} images and 'unknown' are not tested.", ""]
    lines += [f"- {md(n)}" for n in report["notes"]]
    overall = [r for r in report["rows"] if r["attribute"] == "overall"]
    lines += ["", "## Overall", "", "| corruption | severity | n | accuracy [95 % Wilson] |", "|---|---|---|---|"]
    for r in overall:
        lines.append(f"| {md(r['corruption'])} | {r['severity'] or 'clean'} | {r['n']} | {_num(r['accuracy'])} "
                     f"[{_num(r['accuracy_low'])}, {_num(r['accuracy_high'])}] |")
    tests = report["interaction_tests"]
    if tests:
        lines += ["", "## Interaction tests (one Holm family per attribute)", "",
                  "| attribute | group 1 (n) | group 2 (n) | corruption | severity | clean gap | corrupted gap | "
                  "widening [95 % bootstrap] | p | p (Holm) | significant |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for t in tests:
            lines.append(f"| {md(t['attribute'])} | {md(t['group_1'])} ({t['n_1']}) | {md(t['group_2'])} ({t['n_2']}) | "
                         f"{md(t['corruption'])} | {t['severity']} | {t['clean_gap']:+.4f} | {t['corrupted_gap']:+.4f} | "
                         f"{t['interaction']:+.4f} [{t['interaction_low']:+.4f}, {t['interaction_high']:+.4f}] | "
                         f"{t['p_value_raw']:.3g} | {t['p_value']:.3g} | {'yes' if t['significant'] else 'no'} |")
    grouped = [r for r in report["rows"] if r["attribute"] != "overall"]
    if grouped:
        lines += ["", "## Per group", "", "| attribute | group | corruption | severity | n | accuracy [95 % Wilson] |",
                  "|---|---|---|---|---|---|"]
        for r in grouped:
            lines.append(f"| {md(r['attribute'])} | {md(r['group'])} | {md(r['corruption'])} | {r['severity'] or 'clean'} "
                         f"| {r['n']} | {_num(r['accuracy'])} [{_num(r['accuracy_low'])}, {_num(r['accuracy_high'])}] |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> plt.Figure:
    """Heat map of overall accuracy: corruption (rows) x severity (columns), with the clean accuracy in the title."""
    overall = {(r["corruption"], r["severity"]): r["accuracy"] for r in report["rows"] if r["attribute"] == "overall"}
    names, severities = report["corruptions"], report["severities"]
    grid = np.array([[overall.get((c, s), math.nan) for s in severities] for c in names]).reshape(len(names), len(severities))
    fig, ax = plt.subplots(figsize=(1.6 + 0.7 * len(severities), 0.9 + 0.4 * len(names)), layout="constrained")
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for i in range(len(names)):
        for j in range(len(severities)):
            if math.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if grid[i, j] < 0.6 else "black")
    ax.set_xticks(range(len(severities)), [str(s) for s in severities], fontsize=8)
    ax.set_yticks(range(len(names)), [plot_text(n) for n in names], fontsize=8)
    ax.set_xlabel("severity", fontsize=9)
    ax.set_title(f"test accuracy under corruption (clean {overall.get(('clean', 0), math.nan):.3f})", fontsize=9)
    fig.colorbar(image, ax=ax, label="accuracy")
    save_figure(fig, path, dpi=200)
    plt.close(fig)
    return fig


def plot_groups(report: dict, path: Path) -> plt.Figure | None:
    """Heat map per demographic group: group (rows) x corruption (columns), each cell the group's accuracy
    averaged over the severities (the clean accuracy first), so a group that breaks first stands out; None
    when the test split has no group columns."""
    rows = [r for r in report["rows"] if r["attribute"] != "overall" and r["group"] != UNKNOWN]
    if not rows:
        return None
    frame = pd.DataFrame(rows)
    frame["where"] = frame["attribute"].map(plot_text) + ": " + frame["group"].map(plot_text) \
        + " (n=" + frame["n"].astype(str) + ")"
    frame["column"] = np.where(frame["severity"] == 0, "clean", frame["corruption"])
    grid = frame.pivot_table(index="where", columns="column", values="accuracy", aggfunc="mean", sort=False)
    grid = grid[[c for c in ["clean", *report["corruptions"]] if c in grid.columns]]
    fig, ax = plt.subplots(figsize=(2.6 + 0.75 * grid.shape[1], 1.0 + 0.32 * grid.shape[0]), layout="constrained")
    image = ax.imshow(grid.to_numpy(dtype=float), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for (i, j), value in np.ndenumerate(grid.to_numpy(dtype=float)):
        if math.isfinite(value):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color="white" if value < 0.6 else "black")
    ax.set_xticks(range(grid.shape[1]), [plot_text(c) for c in grid.columns], fontsize=8, rotation=45, ha="right")
    ax.set_yticks(range(grid.shape[0]), list(grid.index), fontsize=7)
    ax.set_title("test accuracy per group, mean over severities " + ", ".join(map(str, report["severities"])), fontsize=9)
    fig.colorbar(image, ax=ax, label="accuracy")
    save_figure(fig, path, dpi=200)
    plt.close(fig)
    return fig


def write_robustness_report(model: torch.nn.Module, datamodule, folder: str | Path, **options) -> dict:
    """robustness.csv / .json / .md, robustness.png (overall) and robustness_groups.png (per group) in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    report = robustness_report(model, datamodule, **options)
    per_image = report.pop("per_image")
    write_csv(pd.DataFrame(report["rows"]), folder / "robustness.csv")
    write_json(folder / "robustness.json", report)
    write_text(folder / "robustness.md", format_markdown(report))
    plot(report, folder / "robustness.png")
    plot_groups(report, folder / "robustness_groups.png")
    report["per_image"] = per_image
    return report
