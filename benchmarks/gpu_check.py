"""One short script that proves maskdet's GPU path and times the COMP6721 protocol, for a GPU lent once.

    python benchmarks/gpu_check.py --out DIR                  # on a machine with a CUDA device (< 8 min)
    python benchmarks/gpu_check.py --out DIR --cpu-rehearsal  # the same steps on the CPU, tiny sizes

Every step runs the real entry points (``python -m maskdet.train`` and friends) as a subprocess with its
own time limit, so one hang cannot eat the device time; the whole check stops at ``--deadline``. Only the
embedded synthetic dataset is used and nothing is downloaded (``model.weights=null``: torchvision networks
start from random weights, which is fine for checking the path and for timing). Prints one table, writes
it to DIR/gpu_check.md and DIR/gpu_check.json with every step's output in DIR/gpu_check.log, and exits
non-zero when any step failed. Without a CUDA device (and without --cpu-rehearsal) it prints one
"no CUDA device" line and exits 0.

The lent GPU machines have no network and lack some of maskdet's dependencies: carry them as wheels for
Python 3.12 in a git-ignored .whl/ (hydra-core, omegaconf, antlr4-python3-runtime 4.9.3, fairlearn,
imagehash, pywavelets at the time of writing), install them with
`pip install --no-index --no-deps --target /tmp/site .whl/*.whl` and put /tmp/site and the repository
on PYTHONPATH. The first step imports every maskdet module, so a missing one fails there, first.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# Step budget: expected seconds (measured on one H200, 16 cores, 2026-12-04) and the step's time limit. The check as
# a whole stops at --deadline (default 480 s: the steps before the study take about 350 s, so that about 2 of
# its folds finish); the last step, the longest, gets whatever time is left.
#   step                    measured  limit  what
#   environment                  19     60  imports from the wheels, GPU name, versions
#   cpu reference                25     90  custom CNN, 2 epochs on the CPU: predictions.csv columns to match
#   gpu custom_cnn               26     90  trainer=gpu (bf16, batches on the device, channels-last)
#   gpu resnet18                 32     90  trainer=gpu, 224 px, fine-tuned (full backward)
#   gpu mobilenet_v2             52     90  trainer=gpu, 224 px, frozen backbone, augmentation on the device
#   ddp                          24    120  trainer=ddp on every device present (1 GPU: one DDP process)
#   predict on cpu                7     60  maskdet.predict from the GPU checkpoint, CUDA hidden
#   export on cpu                25     90  maskdet.export (ONNX + onnxruntime parity) from the GPU checkpoint
#   dataset                      34    120  the embedded 8,605 images generated + their 32 px cache
#   224 px cache                 11     90  the same images decoded at 224 px
#   resnet18 frozen cv 3x5       92    120  3 folds x 5 epochs, cached backbone features, one process
#   custom_cnn study 10x20  about 460  rest the COMP6721 study's 10-fold x 20-epoch protocol, cv_in_job=true; 46 s a
#                                           fold, so within the deadline it times the folds that fit ("partial")
#                                           and extrapolates the whole protocol from them
STEP_LIMIT_S = {"environment": 60, "cpu reference": 90, "gpu custom_cnn": 90, "gpu resnet18": 90,
                "gpu mobilenet_v2": 90, "ddp": 120, "predict on cpu": 60, "export on cpu": 90, "dataset": 120,
                "224 px cache": 90, "resnet18 frozen cv": 120, "custom_cnn study": 600}

REPO = Path(__file__).resolve().parents[1]
# Runs maskdet.train like `python -m maskdet.train`, then reports the process's peak GPU memory.
PEAK_RUNNER = """
import atexit, runpy, torch
def peak():
    if torch.cuda.is_initialized():
        print(f"GPU_PEAK_MB={torch.cuda.max_memory_allocated() / 2**20:.0f}", flush=True)
atexit.register(peak)
runpy.run_module("maskdet.train", run_name="__main__", alter_sys=True)
"""
# Imports every maskdet module (a dependency missing on the device fails here, first) and describes the device.
ENV_PROBE = """
import importlib, json, pkgutil, sys, torch, lightning, hydra, onnx, onnxruntime, onnxscript, maskdet
for module in pkgutil.walk_packages(maskdet.__path__, "maskdet."):
    importlib.import_module(module.name)
cuda = torch.cuda.is_available()
print("ENV=" + json.dumps({
    "gpu": torch.cuda.get_device_name(0) if cuda else "none", "gpus": torch.cuda.device_count() if cuda else 0,
    "gpu_mem_gb": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else 0,
    "bf16": bool(cuda and torch.cuda.is_bf16_supported()), "python": sys.version.split()[0],
    "torch": torch.__version__, "cuda": torch.version.cuda, "lightning": lightning.__version__,
    "hydra": hydra.__version__}))
"""
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


@dataclass(frozen=True)
class Sizes:
    """What each step trains: the real protocol on a GPU, a miniature of it in the CPU rehearsal."""
    trainer: str            # trainer config of the device runs
    ddp: str                # trainer config of the DDP run
    tiny_per_class: int     # images per class of the small runs' dataset
    tiny_epochs: int
    large_image: int        # image size of the torchvision runs (224 on the GPU)
    full_per_class: int | None  # None: the embedded dataset's own counts (8,605 images)
    study_folds: int
    study_epochs: int
    cv_folds: int
    cv_epochs: int
    limit_scale: float      # step limits are multiplied by this (the CPU is far slower)
    deadline_s: float


ON_GPU = Sizes(trainer="gpu", ddp="ddp", tiny_per_class=64, tiny_epochs=2, large_image=224, full_per_class=None,
               study_folds=10, study_epochs=20, cv_folds=3, cv_epochs=5, limit_scale=1.0, deadline_s=480)
REHEARSAL = Sizes(trainer="cpu", ddp="ddp_sim", tiny_per_class=20, tiny_epochs=1, large_image=64, full_per_class=40,
                  study_folds=2, study_epochs=1, cv_folds=2, cv_epochs=1, limit_scale=4.0, deadline_s=2400)


class StepFailed(Exception):
    status = "FAIL"

    def __init__(self, message: str, figures: dict | None = None):
        super().__init__(message)
        self.figures = figures or {}


class StepTimedOut(StepFailed):
    """A step's command ran past its limit and was killed."""


class StepPartial(StepFailed):
    """A timed study stopped at its limit after finishing some folds: its figures stand, extrapolated."""
    status = "partial"


@dataclass
class Result:
    step: str
    status: str = "ok"
    seconds: float = 0.0
    limit_s: float = 0.0
    figures: dict = field(default_factory=dict)
    error: str = ""


def find_checkpoint(run_dir: Path) -> Path:
    """The run's checkpoint to use downstream: last.ckpt where present, else the newest *.ckpt."""
    found = sorted((run_dir / "checkpoints").glob("*.ckpt"), key=lambda p: (p.name != "last.ckpt", -p.stat().st_mtime))
    if not found:
        raise StepFailed(f"no checkpoint in {run_dir / 'checkpoints'}")
    return found[0]


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise StepFailed(f"{path.name} was not written ({path})")
    return json.loads(path.read_text())


def csv_shape(path: Path) -> tuple[list[str], int]:
    """Header and number of data rows of a CSV file."""
    if not path.is_file():
        raise StepFailed(f"{path.name} was not written ({path})")
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    return (rows[0] if rows else []), max(len(rows) - 1, 0)


def check_losses(metrics: dict, where: Path) -> None:
    for stage, key in (("val", "val/loss"), ("test", "test/loss")):
        value = metrics.get(stage, {}).get(key)
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise StepFailed(f"{key} is {value!r} in {where / 'metrics.json'} (expected a finite number)")


class Check:
    """Runs the steps in order, each as subprocesses under its limit, and collects the table."""

    def __init__(self, sizes: Sizes, work: Path, out: Path, deadline_s: float, rehearsal: bool):
        self.sizes, self.work, self.cache, self.out, self.rehearsal = sizes, work, work / "cache", out, rehearsal
        self.log = (out / "gpu_check.log").open("w")
        self.started = time.monotonic()
        self.deadline_s = deadline_s
        self.results: list[Result] = []
        self.runs: dict[str, Path] = {}  # step name -> its run folder, for the steps that build on it
        self.reference_columns: list[str] | None = None
        self.last_output = ""
        self.env = {**os.environ, "HYDRA_FULL_ERROR": "1",
                    "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}

    # ------------------------------------------------------------------ running
    def remaining(self) -> float:
        return self.deadline_s - (time.monotonic() - self.started)

    def failed(self) -> list[str]:
        """The steps that failed; a study stopped at its limit after some folds ("partial") is not among them."""
        return [r.step for r in self.results if r.status == StepFailed.status]

    def step(self, name: str, body: Callable[[float], dict]) -> None:
        limit = max(0.0, min(STEP_LIMIT_S[name] * self.sizes.limit_scale, self.remaining()))
        result = Result(name, limit_s=round(limit))
        print(f"[gpu_check] {name} (limit {limit:.0f} s) ...", file=sys.stderr, flush=True)
        self.log.write(f"\n{'=' * 30} {name} (limit {limit:.0f} s)\n")
        start = time.monotonic()
        try:
            if limit < 5:
                raise StepFailed("not started: the check's deadline was reached")
            result.figures = body(limit)
        except StepFailed as err:
            result.status, result.error, result.figures = err.status, str(err), err.figures
        except Exception as err:  # noqa: BLE001 - a bug in a check is reported as that step's failure
            result.status, result.error = "FAIL", f"{type(err).__name__}: {err}"
        result.seconds = round(time.monotonic() - start, 1)
        self.log.write(f"---- {name}: {result.status} in {result.seconds} s {result.error}\n")
        self.log.flush()
        print(f"[gpu_check] {name}: {result.status} {result.seconds} s {result.error}", file=sys.stderr, flush=True)
        self.results.append(result)
        self.save()

    def table(self) -> str:
        env = self.results[0].figures if self.results else {}
        mode = "CPU rehearsal (tiny sizes, accelerator cpu)" if self.rehearsal else "GPU check"
        header = (f"maskdet {mode}: {env.get('gpu', '?')} x{env.get('gpus', '?')}, torch {env.get('torch', '?')} "
                  f"(CUDA {env.get('cuda', '?')}), lightning {env.get('lightning', '?')}; "
                  f"{len(self.results)} steps in {time.monotonic() - self.started:.0f} s")
        return render(self.results, header)

    def save(self) -> None:
        """Written after every step, so that a check stopped from outside still leaves its table."""
        (self.out / "gpu_check.md").write_text(self.table() + "\n")
        (self.out / "gpu_check.json").write_text(json.dumps(
            {"mode": "cpu-rehearsal" if self.rehearsal else "gpu", "total_s": round(time.monotonic() - self.started, 1),
             "failed": self.failed(),
             "steps": [r.__dict__ for r in self.results]}, indent=2, default=str))

    def run(self, args: list[str], limit: float, cpu_only: bool = False, peak: bool = False) -> str:
        """Run ``python <args>`` in the repository; return its output, raise StepFailed on error or timeout."""
        argv = [sys.executable, "-c", PEAK_RUNNER, *args] if peak else [sys.executable, *args]
        env = {**self.env, "CUDA_VISIBLE_DEVICES": ""} if cpu_only else self.env
        shown = {PEAK_RUNNER: "<maskdet.train, then its peak GPU memory>", ENV_PROBE: "<environment probe>"}
        self.log.write("$ python " + " ".join(shown.get(a, a) for a in argv[1:])
                       + (" (CUDA hidden)" if cpu_only else "") + "\n")
        self.log.flush()
        # a session of its own, so that a timeout kills the whole tree (DDP workers, data workers)
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=max(limit, 1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            self.log.write(output)
            raise StepTimedOut(f"timed out after {limit:.0f} s") from None
        self.log.write(output)
        self.last_output = output
        if proc.returncode != 0:
            lines = [line for line in output.splitlines() if line.strip()]
            raise StepFailed(f"exit status {proc.returncode}: {lines[-1][:300] if lines else 'no output'}")
        return output

    def train_args(self, run_dir: Path, *overrides: str) -> list[str]:
        return [f"hydra.run.dir={run_dir}", f"paths.cache_dir={self.cache}", f"paths.log_dir={self.work / 'logs'}",
                "~callbacks.progress_bar", "trainer.enable_progress_bar=false", *overrides]

    # -------------------------------------------------------------------- steps
    def environment(self, limit: float) -> dict:
        output = self.run(["-c", ENV_PROBE], limit)
        env = json.loads(next(line[4:] for line in output.splitlines() if line.startswith("ENV=")))
        if self.sizes.trainer == "gpu" and not (env["gpus"] and env["bf16"]):
            raise StepFailed(f"no usable CUDA device with bf16 in the subprocess: {env}", env)
        return env

    def tiny_run(self, name: str, limit: float, *overrides: str, trainer: str | None = None, peak: bool = True,
                 explanations: bool = True, reference: bool = False) -> dict:
        """A small training run; its outputs checked against the CPU reference run's."""
        run_dir = self.work / name.replace(" ", "_")
        args = self.train_args(run_dir, f"trainer={trainer or self.sizes.trainer}",
                               f"data.source.per_class={self.sizes.tiny_per_class}",
                               f"trainer.max_epochs={self.sizes.tiny_epochs}",
                               *([] if explanations else ["callbacks.explanations=null"]), *overrides)
        output = self.run(args if peak else ["-m", "maskdet.train", *args], limit, peak=peak)
        metrics = read_json(run_dir / "metrics.json")
        check_losses(metrics, run_dir)
        columns, rows = csv_shape(run_dir / "predictions.csv")
        test_images = read_json(run_dir / "data_report.json")["counts"]["split"]["test"]
        if rows != test_images:
            raise StepFailed(f"predictions.csv has {rows} rows for {test_images} test images ({run_dir})")
        if reference:
            self.reference_columns, same_columns = columns, "reference"
        elif self.reference_columns is None:
            same_columns = "not compared (no CPU reference)"
        elif columns != self.reference_columns:
            raise StepFailed(f"predictions.csv columns differ from the CPU run's: {columns} vs {self.reference_columns}")
        else:
            same_columns = "= cpu run"
        if explanations and not any((run_dir / "explain").glob("*.png")):
            raise StepFailed(f"no explanation images in {run_dir / 'explain'}")
        find_checkpoint(run_dir)
        self.runs[name] = run_dir
        figures = {"trainer": trainer or self.sizes.trainer, "test acc": round(metrics["test"]["test/acc"], 3),
                   "test loss": round(metrics["test"]["test/loss"], 3), "epochs": metrics.get("epochs_trained"),
                   "columns": same_columns}
        return {**figures, **peak_memory(output)}

    def ddp(self, limit: float) -> dict:
        figures = self.tiny_run("ddp", limit, trainer=self.sizes.ddp, peak=False, explanations=False)
        # Lightning logs "Initializing distributed: GLOBAL_RANK: r, MEMBER: r+1/world" from each DDP process: into
        # the run's train.log (the quiet console no longer shows it), and on the console with verbose=true
        log = self.runs["ddp"] / "train.log"
        written = (log.read_text(errors="replace") if log.is_file() else "") + "\n" + self.last_output
        # (rank zero's; other ranks' lines reach the file on some platforms only), then, from rank zero once every
        # process joined, "All distributed processes registered. Starting with N processes"
        members = {line.rsplit("MEMBER:", 1)[1].strip() for line in written.splitlines()
                   if "Initializing distributed" in line and "MEMBER:" in line}
        started = re.findall(r"Starting with (\d+) processes", written)
        backend = re.findall(r"distributed_backend=(\w+)", written)
        if not members or not started:
            raise StepFailed(f"the run did not go through torch.distributed (no 'Initializing distributed' and "
                             f"'Starting with N processes' lines in {log} or on the console)")
        world = int(started[-1])
        if world != int(sorted(members)[0].split("/")[1]):
            raise StepFailed(f"torch.distributed started {world} processes, Lightning expected {sorted(members)[0]}")
        return {**figures, "ddp processes": world, "backend": backend[-1] if backend else "?"}

    def predict(self, limit: float) -> dict:
        run_dir = self.runs.get("gpu custom_cnn") or _missing("gpu custom_cnn")
        root = Path(read_json(run_dir / "data_report.json")["root"])
        images = sum(1 for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        out = self.work / "predict"
        self.run(["-m", "maskdet.predict", f"ckpt_path={find_checkpoint(run_dir)}", f"input={root}", "device=cpu",
                  f"hydra.run.dir={out}", f"paths.cache_dir={self.cache}"], limit, cpu_only=True)
        _, rows = csv_shape(out / "predictions.csv")
        _, skipped = csv_shape(out / "skipped.csv")
        if rows != images or skipped:
            raise StepFailed(f"{rows} predictions and {skipped} skipped for {images} images under {root}")
        with (out / "predictions.csv").open(newline="") as f:
            on_cpu = {Path(row["path"]).resolve(): row["prediction"] for row in csv.DictReader(f)}
        with (run_dir / "predictions.csv").open(newline="") as f:
            on_gpu = {Path(row["path"]).resolve(): row["prediction"] for row in csv.DictReader(f)}
        same = sum(on_cpu.get(path) == label for path, label in on_gpu.items())
        return {"images": rows, "skipped": skipped, "same class as the GPU test run": f"{same}/{len(on_gpu)}"}

    def export(self, limit: float) -> dict:
        run_dir = self.runs.get("gpu custom_cnn") or _missing("gpu custom_cnn")
        out = self.work / "export"
        self.run(["-m", "maskdet.export", f"ckpt_path={find_checkpoint(run_dir)}", f"hydra.run.dir={out}",
                  f"paths.cache_dir={self.cache}"], limit, cpu_only=True)
        if not (out / "model.onnx").is_file():
            raise StepFailed(f"model.onnx was not written in {out}")
        parity = read_json(out / "model.json")["parity"]
        return {"parity images": parity["images"], "max abs diff": f"{parity['max_abs_diff']:.1e}",
                "same class": f"{parity['same_prediction']}/{parity['images']}"}

    def dataset(self, limit: float, image_size: int) -> dict:
        out = self.work / f"dataset_{image_size}px"
        per_class = [f"data.source.per_class={self.sizes.full_per_class}"] if self.sizes.full_per_class else []
        self.run(["-m", "maskdet.data", f"data.image_size={image_size}", *per_class, f"hydra.run.dir={out}",
                  f"paths.cache_dir={self.cache}"], limit)
        return {"images": read_json(out / "data_report.json")["num_images"], "image size": image_size}

    def study(self, name: str, limit: float, folds: int, epochs: int, note: str, *overrides: str) -> dict:
        """A whole cross-validation in one process (cv_in_job=true), timed; partial figures on a timeout."""
        run_dir = self.work / name.replace(" ", "_")
        per_class = [f"data.source.per_class={self.sizes.full_per_class}"] if self.sizes.full_per_class else []
        args = self.train_args(run_dir, f"trainer={self.sizes.trainer}", "cv_in_job=true", f"data.num_folds={folds}",
                               f"trainer.max_epochs={epochs}", "callbacks.explanations=null", *per_class, *overrides)
        start = time.monotonic()
        try:
            output = self.run(args, limit, peak=True)
        except StepFailed as err:
            figures = {"note": note, **study_metrics(run_dir, folds, time.monotonic() - start)}
            partial = isinstance(err, StepTimedOut) and "all folds (extrapolated) s" in figures  # >= 1 fold done
            raise (StepPartial if partial else StepFailed)(str(err), figures) from None
        figures = {"note": note, **study_metrics(run_dir, folds, time.monotonic() - start)}
        summary = read_json(run_dir / "metrics.json")
        if summary.get("folds") != folds or summary.get("failed"):
            raise StepFailed(f"{summary.get('folds')} folds, {summary.get('failed')} failed (expected {folds})", figures)
        return {**figures, **peak_memory(output)}


def _missing(step: str):
    raise StepFailed(f"needs the run of step '{step}', which failed")


def peak_memory(output: str) -> dict:
    peaks = [int(line.split("=")[1]) for line in output.splitlines() if line.startswith("GPU_PEAK_MB=")]
    return {"GPU peak MB": peaks[-1]} if peaks else {}


def study_metrics(run_dir: Path, folds: int, seconds: float) -> dict:
    """Accuracy over the finished folds, seconds per fold, and training images per second of the study."""
    done = [json.loads(p.read_text()) for p in sorted(run_dir.glob("fold_*/metrics.json"))]
    for fold_dir in sorted(run_dir.glob("fold_*")):
        if (fold_dir / "metrics.json").is_file():
            check_losses(json.loads((fold_dir / "metrics.json").read_text()), fold_dir)
    figures: dict = {"folds done": f"{len(done)}/{folds}", "study s": round(seconds, 1)}
    if not done:
        return figures
    accs = [m["test"]["test/acc"] for m in done]
    train_images = sum(read_json(run_dir / f"fold_{k}" / "data_report.json")["counts"]["split"]["train"]
                       * done[k]["epochs_trained"] for k in range(len(done)))
    fold_s = [m.get("wall_time_s") or seconds / len(done) for m in done]  # a fold's own time, imports excluded
    figures.update({"test acc": f"{statistics.mean(accs):.3f} ± {statistics.pstdev(accs):.3f}",
                    "s/fold": round(statistics.mean(fold_s), 1), "train img/s": round(train_images / sum(fold_s))})
    if len(done) < folds:
        figures["all folds (extrapolated) s"] = round(statistics.mean(fold_s) * folds)
    return figures


def render(results: list[Result], header: str) -> str:
    lines = [header, "", "| step | status | seconds | limit s | figures |", "|---|---|---:|---:|---|"]
    for r in results:
        figures = "; ".join(f"{k}: {v}" for k, v in r.figures.items())
        if r.error:
            figures = f"{figures}; ERROR: {r.error}" if figures else f"ERROR: {r.error}"
        lines.append(f"| {r.step} | {r.status} | {r.seconds:.1f} | {r.limit_s:.0f} | {figures.replace('|', '/')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for gpu_check.md, .json and .log")
    parser.add_argument("--cpu-rehearsal", action="store_true",
                        help="run every step on the CPU at tiny sizes (proves the steps and checks, not the GPU)")
    parser.add_argument("--deadline", type=float, help="seconds for the whole check (default 480; rehearsal 2400)")
    parser.add_argument("--keep-work", action="store_true", help="keep the run folders (kept anyway on a failure)")
    args = parser.parse_args(argv)

    import torch  # here, not at the top: --help works anywhere

    if not args.cpu_rehearsal and not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine; nothing to check (use --cpu-rehearsal to rehearse the steps).")
        return 0
    sizes = REHEARSAL if args.cpu_rehearsal else ON_GPU
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="maskdet-gpu-check-"))
    check = Check(sizes, work, args.out, args.deadline or sizes.deadline_s, args.cpu_rehearsal)
    s, big = sizes, f"data.image_size={sizes.large_image}"
    check.step("environment", check.environment)
    check.step("cpu reference", lambda t: check.tiny_run("cpu reference", t, trainer="cpu", peak=False,
                                                         explanations=False, reference=True))
    check.step("gpu custom_cnn", lambda t: check.tiny_run("gpu custom_cnn", t, "+experiment=custom_cnn"))
    check.step("gpu resnet18", lambda t: check.tiny_run("gpu resnet18", t, "+experiment=resnet18_finetune",
                                                        "model.weights=null", big))
    check.step("gpu mobilenet_v2", lambda t: check.tiny_run("gpu mobilenet_v2", t, "+experiment=mobilenetv2_frozen",
                                                            "model.weights=null", big))
    check.step("ddp", check.ddp)
    check.step("predict on cpu", check.predict)
    check.step("export on cpu", check.export)
    check.step("dataset", lambda t: check.dataset(t, 32))
    check.step("224 px cache", lambda t: check.dataset(t, s.large_image))
    check.step("resnet18 frozen cv", lambda t: check.study(
        "resnet18 frozen cv", t, s.cv_folds, s.cv_epochs, "random frozen backbone (weights=null), features cached once",
        "+experiment=resnet18_frozen_kfold", "model.weights=null", "data.augment=null", big))
    check.step("custom_cnn study", lambda t: check.study(
        "custom_cnn study", t, s.study_folds, s.study_epochs, "explanations off", "+experiment=custom_cnn_kfold"))
    check.log.close()

    print(check.table())
    failed = check.failed()
    if failed:
        print(f"\nFAILED: {', '.join(failed)} (run folders kept in {work}; output in {args.out / 'gpu_check.log'})")
        return 1
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
