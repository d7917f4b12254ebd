"""How maskdet's cost grows with the dataset: time per image and peak memory at several dataset sizes.

    python benchmarks/scale.py [--quick] [--sizes 2000 8000 32000 133000] [--train-batches 60] [--threads 1]

(a) Training data paths at 32 px, for N images (a 70 % random training split of them):
      ram   the split copied into RAM (MaskDataModule's path while the split fits data.cache_memory_gb)
      file  batches read from the cache file per batch (data.cache_memory_gb=0)
      pil   the source studies' per-item loop (benchmarks/run.py's PilDataset): PIL decode + torchvision
            transforms in a DataLoader with 2 workers, over N paths cycling through 2,000 generated 128 px JPEGs
    The decoded cache of N images is SYNTHESISED with random pixels (decoding 133k files would take the
    whole run; the training path reads bytes the same whatever they hold). The splits are built and
    served by MaskDataModule's own code (``_make_split``, ``train_dataloader``). Per case: ``data`` is the
    data path alone (up to --data-batches batches as the loader delivers them), ``train`` adds the custom CNN's
    forward, backward and Adam step (--train-batches batches of 32). The file is read from a warm page
    cache (it was just written); a cold read is bounded by the disk instead.
(b) Building the decoded cache of N files (paths cycling through the 2,000 JPEGs) at 64 px.
(c) Per-image costs that the README's estimates for larger images use: decoding and resizing one file
    on one core, and gathering 224 px rows in RAM or from the cache file.

Every case runs in a process of its own, which reports its peak RSS (VmHWM) and its peak anonymous
memory (RssAnon, sampled; with the PIL loop's workers added as Pss_Anon, so pages they share with it
count once). Pages of the cache file in the page cache are not the process's own memory: anonymous
memory is the bound that matters. Times are given as wall time and as CPU time (the process's and its
workers'), which other load on a shared machine changes least. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import torch
from PIL import Image
from run import CUSTOM_CNN_NORM, PilDataset, pil_transform  # benchmarks/run.py, beside this script
from torch import nn
from torch.utils.data import DataLoader

from maskdet.data import cache
from maskdet.data.augment import to_float
from maskdet.data.datamodule import MaskDataModule
from maskdet.data.images import load_resized
from maskdet.data.prepare import PreparedData
from maskdet.data.settings import DataSettings
from maskdet.data.sources import read_class_folders
from maskdet.data.synthetic import generate, make_spec
from maskdet.models import MaskClassifier

MB = 2**20


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """Memory fields of /proc/PID/status, in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if value.strip().endswith(" kB"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def anon_bytes(pids: list[int]) -> int:
    """Anonymous memory of a process (RssAnon), or of a process and its forked DataLoader workers
    (their proportional shares, Pss_Anon, so that pages shared copy-on-write count once)."""
    if len(pids) == 1:
        return proc_status(pids[0])["RssAnon"]
    total = 0
    for pid in pids:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except (FileNotFoundError, ProcessLookupError):  # a worker gone between listing and reading
            continue
        total += next(int(line.split()[1]) * 1024 for line in rollup.splitlines() if line.startswith("Pss_Anon:"))
    return total


class PeakMemory:
    """Peak RSS of this process (VmHWM) and peak anonymous memory of it and its DataLoader workers,
    sampled every 10 ms (RssAnon has no high-water mark of its own)."""

    def __init__(self, every: float = 0.01):
        self.every, self._stop, self.cpu_s = every, threading.Event(), 0.0  # cpu_s: the sampler's own
        self.base_anon = self.peak_anon = proc_status()["RssAnon"]
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            start = time.thread_time()
            pids = [me.pid, *(child.pid for child in me.children(recursive=True))]
            self.peak_anon = max(self.peak_anon, anon_bytes(pids))
            self.cpu_s += time.thread_time() - start
            self._stop.wait(self.every if len(pids) == 1 else 5 * self.every)  # smaps_rollup costs more

    def process_cpu_s(self) -> float:
        """CPU seconds of this process and its reaped children (DataLoader workers), less the sampler's."""
        me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime - self.cpu_s

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {"peak_rss_mb": proc_status()["VmHWM"] / MB, "peak_anon_mb": self.peak_anon / MB,
                "base_anon_mb": self.base_anon / MB}


# ------------------------------------------------------------------ one case, in its own process
def train_split(n: int) -> np.ndarray:
    """A 70 % random training split of n rows (the same in every case)."""
    return np.sort(np.random.default_rng(0).permutation(n)[: int(0.7 * n)])


def cached_loader(npy: Path, rows: np.ndarray, size: int, budget_gb: float | None):
    """MaskDataModule's training loader for a split of ``npy``'s rows, built by the datamodule's own code
    with a hand-made index (scanning and hashing 133k files is not what is measured)."""
    dm = MaskDataModule(DataSettings(read_class_folders, image_size=size, batch_size=32, cache_memory_gb=budget_gb))
    index = pd.DataFrame({"selected": True, "split": "train", "label": rows % 4, "cache_row": rows})
    dm.data = PreparedData(index, [], [str(c) for c in range(4)], None, None, {})
    split = dm._make_split("train", np.load(npy, mmap_mode="r"))
    dm._splits = {"train": split}
    return dm.train_dataloader, split.in_memory


def pil_loader(files: list[str], rows: np.ndarray, size: int):
    """The per-item PIL DataLoader over the split's paths (path i is generated file i mod 2000)."""
    paths = [files[i % len(files)] for i in rows]
    labels = [int(i % 4) for i in rows]
    dataset = PilDataset(paths, labels, pil_transform(size, False, CUSTOM_CNN_NORM))
    return lambda: DataLoader(dataset, batch_size=32, shuffle=True, num_workers=2)


def batches(make_loader, count: int):
    """``count`` batches (images, labels) as the loader delivers them (maskdet: uint8, turned into floats
    on the device; the PIL loop: normalised floats), over as many epochs as it takes."""
    epochs = (make_loader() for _ in itertools.count())
    for batch in itertools.islice(itertools.chain.from_iterable(epochs), count):
        yield (batch["image"], batch["label"]) if isinstance(batch, dict) else batch


def timed(stream, memory: PeakMemory, step=None) -> tuple[float, float]:
    """(wall, CPU) microseconds per image over ``stream``. Wall time leaves out the first batch (worker
    start, first touch); CPU time counts every batch and the PIL loop's workers (joined and reaped when
    their epoch's iterator is dropped), and is the figure that other load on the machine changes least."""
    images, timed_images, start, cpu = 0, 0, None, memory.process_cpu_s()
    for x, y in stream:
        if step is not None:
            step(x, y)
        images += len(x)
        if start is None:
            start = time.perf_counter()
            continue
        timed_images += len(x)
    wall = time.perf_counter() - start
    stream.close()
    return 1e6 * wall / max(timed_images, 1), 1e6 * (memory.process_cpu_s() - cpu) / images


def run_case(args) -> dict:
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    memory = PeakMemory()
    rows = train_split(args.n)
    start = time.perf_counter()
    if args.case == "pil":
        files = json.loads(Path(args.files).read_text())
        make_loader, in_memory = pil_loader(files, rows, args.size), False
    else:
        make_loader, in_memory = cached_loader(Path(args.npy), rows, args.size, None if args.case == "ram" else 0)
        assert in_memory == (args.case == "ram"), "the split did not take the path asked for"
    result = {"setup_s": time.perf_counter() - start, "budget_gb": 0 if args.case == "file" else
              cache.memory_budget(None) / 2**30}
    result["data_us"], result["data_cpu_us"] = timed(batches(make_loader, min(args.data_batches, len(rows) // 32)),
                                                     memory)
    if args.train_batches:
        model = MaskClassifier("custom_cnn", 4, image_size=args.size).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step(x, y):
            if x.dtype == torch.uint8:  # maskdet: as on_after_batch_transfer does
                x = to_float(x)
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        result["train_us"], result["train_cpu_us"] = timed(batches(make_loader, args.train_batches), memory, step)
    return {**result, **memory.stop()}


def run_build(args) -> dict:
    files = json.loads(Path(args.files).read_text())
    paths = pd.Series([files[i % len(files)] for i in range(args.n)])
    import pyarrow.parquet  # noqa: F401 - loaded before measuring: the build writes meta.parquet with it

    memory = PeakMemory()
    start, cpu = time.perf_counter(), memory.process_cpu_s()
    cache.build(paths, args.size, Path(args.npy))
    return {"build_us": 1e6 * (time.perf_counter() - start) / args.n,
            "build_cpu_us": 1e6 * (memory.process_cpu_s() - cpu) / args.n, **memory.stop()}


def in_subprocess(**kw) -> dict:
    command = [sys.executable, __file__, *itertools.chain.from_iterable((f"--{k.replace('_', '-')}", str(v))
                                                                         for k, v in kw.items())]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ the whole benchmark
def synthesise(npy: Path, n: int, size: int) -> None:
    """A decoded-cache file of n random images, written in chunks."""
    array = np.lib.format.open_memmap(npy, mode="w+", dtype=np.uint8, shape=(n, 3, size, size))
    rng = np.random.default_rng(1)
    for start in range(0, n, 8192):
        array[start:start + 8192] = rng.integers(0, 256, array[start:start + 8192].shape, dtype=np.uint8)
    array.flush()
    del array


def decode_costs(work: Path, files: list[str]) -> list[tuple[str, float, float]]:
    """(what, wall, CPU) microseconds to decode and resize one file on one core: the generated 128 px
    JPEGs to 32 px, and 1024 px PNGs (the size of MaskedFace-Net's FFHQ-based images) to 224 px."""
    big = generate(make_spec(per_class=3, seed=5, size=1024), work / "big")
    pngs = []
    for i, jpeg in enumerate(sorted(big.rglob("*.jpg"))):
        pngs.append(work / f"big-{i}.png")
        Image.open(jpeg).save(pngs[-1])
    out = []
    for what, paths, size in (("128 px JPEG -> 32 px", files[:300], 32), ("1024 px PNG -> 224 px", pngs, 224)):
        start, cpu = time.perf_counter(), time.process_time()
        for path in paths:
            load_resized(path, size)
        out.append((what, 1e6 * (time.perf_counter() - start) / len(paths),
                    1e6 * (time.process_time() - cpu) / len(paths)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and few batches (a smoke test)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000, 32000, 133000])
    parser.add_argument("--build-sizes", type=int, nargs="+", default=[2000, 8000, 32000])
    parser.add_argument("--data-batches", type=int, default=300)
    parser.add_argument("--train-batches", type=int, default=60)
    parser.add_argument("--threads", type=int, default=0, help="torch threads per case (0: torch's default); 1 "
                        "keeps a busy machine's other load from stalling torch's parallel kernels")
    # one case, run by the benchmark itself in a process of its own
    parser.add_argument("--case", choices=["ram", "file", "pil", "build"], help=argparse.SUPPRESS)
    for name, kind in (("n", int), ("size", int), ("npy", str), ("files", str)):
        parser.add_argument(f"--{name}", type=kind, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_build(args) if args.case == "build" else run_case(args)))
        return
    if args.quick:
        args.sizes, args.build_sizes, args.data_batches, args.train_batches = [2000, 8000], [2000], 50, 10

    work = Path(tempfile.mkdtemp(prefix="maskdet-scale-"))
    root = generate(make_spec(per_class=500, seed=11, size=128), work / "faces")  # as benchmarks/run.py
    files = sorted(str(p) for p in root.rglob("*.jpg"))
    (work / "files.json").write_text(json.dumps(files))
    common = {"files": work / "files.json", "data_batches": args.data_batches, "threads": args.threads}

    print(f"(a) training data paths, 32 px, batch 32; data: up to {args.data_batches} batches as delivered; train: "
          f"{args.train_batches} batches through the custom CNN (forward, backward, Adam)", flush=True)
    rows = []
    for n in args.sizes:
        npy = work / f"cache-{n}.npy"
        synthesise(npy, n, 32)
        for case in ("ram", "file", "pil"):
            got = in_subprocess(case=case, n=n, size=32, npy=npy, train_batches=args.train_batches, **common)
            rows.append({"images": n, "path": case, "cache_mb": npy.stat().st_size / MB,
                         "split_mb": int(0.7 * n) * 3 * 32 * 32 / MB, **got})
            print("   ", json.dumps(rows[-1]), flush=True)
        npy.unlink()
    (work / "scale.json").write_text(json.dumps(rows, indent=1))

    print(f"(b) building the decoded cache at 64 px, paths cycling through {len(files)} JPEGs", flush=True)
    builds = []
    for n in args.build_sizes:
        got = in_subprocess(case="build", n=n, size=64, npy=work / f"built-{n}", files=work / "files.json")
        builds.append({"files": n, "cache_mb": n * 3 * 64 * 64 / MB, **got})
        print("   ", json.dumps(builds[-1]), flush=True)

    print("(c) per-image costs behind the README's estimates", flush=True)
    costs = decode_costs(work, files)
    n224 = 1000 if args.quick else 4000
    synthesise(work / "cache-224.npy", n224, 224)
    for case in ("ram", "file"):
        got = in_subprocess(case=case, n=n224, size=224, npy=work / "cache-224.npy", train_batches=0, **common)
        costs.append((f"one 224 px image (uint8) in a shuffled batch, {case} ({n224} images)", got["data_us"],
                      got["data_cpu_us"]))

    shutil.rmtree(work)
    print()
    print("| images | cache MB | split MB | path | budget GB | setup s | data µs/img wall / CPU | train µs/img "
          "wall / CPU | PIL loop time / this, wall / CPU | peak RSS MB | peak anon MB | anon above start MB |")
    print("|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        pil = next(r for r in rows if r["images"] == row["images"] and r["path"] == "pil")
        budget = "-" if row["path"] == "pil" else f"{row['budget_gb']:.1f}"
        print(f"| {row['images']:,} | {row['cache_mb']:.0f} | {row['split_mb']:.0f} | {row['path']} | {budget} | "
              f"{row['setup_s']:.2f} | {row['data_us']:,.1f} / {row['data_cpu_us']:,.1f} | {row['train_us']:,.0f} / "
              f"{row['train_cpu_us']:,.0f} | {pil['train_us'] / row['train_us']:.2f}x / "
              f"{pil['train_cpu_us'] / row['train_cpu_us']:.2f}x | {row['peak_rss_mb']:.0f} | "
              f"{row['peak_anon_mb']:.0f} | {row['peak_anon_mb'] - row['base_anon_mb']:.0f} |")
    print("\npeak RSS: the main process's VmHWM (pil: without its 2 workers); anon: its RssAnon, with the PIL "
          "loop's workers added (Pss_Anon); start: after imports, before the split is built")
    print("\n| files | cache MB | build µs/file wall / CPU | peak RSS MB | peak RssAnon MB | RssAnon above start MB |")
    print("|---:|---:|---:|---:|---:|---:|")
    for b in builds:
        print(f"| {b['files']:,} | {b['cache_mb']:.0f} | {b['build_us']:.0f} / {b['build_cpu_us']:.0f} | "
              f"{b['peak_rss_mb']:.0f} | "
              f"{b['peak_anon_mb']:.0f} | {b['peak_anon_mb'] - b['base_anon_mb']:.0f} |")
    print("\n| per image | µs wall | µs CPU |\n|---|---:|---:|")
    for what, wall, cpu in costs:
        print(f"| {what} | {wall:,.1f} | {cpu:,.1f} |")


if __name__ == "__main__":
    main()
