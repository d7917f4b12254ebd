"""The README is executed: every command in README.md is run here (with tiny sizes added) or composed, or
listed below with the reason it cannot run, so no README example can go stale.

Commands run as a user would type them, from a fresh working directory (outputs/ and .cache/ land there,
as the README says), with placeholders (`<run>`, `ckpt_path=...`, `/data/faces`, ...) replaced by real
paths and tiny-size overrides set for each entry point. A new README command that is neither run nor
listed fails `test_every_readme_command_is_checked`.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from tests.conftest import CONF, REPO
from tests.helpers import commands
from tests.helpers.readme_commands import (
    ARGPARSE_ENTRIES,
    HYDRA_ENTRIES,
    OVERRIDE,
    Command,
    config_dir,
    override_spans,
    readme_commands,
    readme_files,
    replace_override,
)

README = (REPO / "README.md").read_text()
COMMANDS = readme_commands(README)
FILES = readme_files(README)  # e.g. my_conf/experiment/my_exp.yaml, written into the working directory

# Commands whose run would repeat a run here or a named test elsewhere in the suite: composed, not run.
COMPOSE_ONLY = {
    "python -m maskdet.train data.source.per_class=200 trainer.max_epochs=3":
        "with tiny sizes it is the default run, `python -m maskdet.train`, which runs",
    "python -m maskdet.train +experiment=mobilenetv2_finetune trainer.max_epochs=10":
        "every experiment trains in tests/test_train.py::test_experiment_fast_dev_run; the transfer path runs "
        "here with +experiment=resnet18_frozen",
    "python -m maskdet.train -m data.fold=0,1,2,3,4 data.num_folds=5 data.fold_seed=0,1,2":
        "15 jobs; a repeated k-fold (3 folds x 2 repeats) runs in "
        "tests/test_label_issues.py::test_a_repeated_kfold_sweep_on_planted_noise_flags_it_and_data_exclude_retrains_without",
    "python -m maskdet.train -m +experiment=custom_cnn_kfold":
        "runs with tiny sizes in tests/test_sweeps.py::test_kfold_experiment_runs_every_fold_and_summarises",
    "python -m maskdet.train -m +experiment=custom_cnn_kfold hydra/launcher=joblib hydra.launcher.n_jobs=2":
        "the joblib launcher runs two folds in parallel in "
        "tests/test_sweeps.py::test_joblib_launcher_runs_folds_in_parallel_on_one_shared_cache",
    "python -m maskdet.train -m hparams_search=optuna hydra.sweeper.n_trials=30":
        "runs with hydra.sweeper.n_trials=2 in tests/test_sweeps.py::test_optuna_search_optimises_a_cross_validated_score",
    "python -m maskdet.train -m +experiment=resnet18_frozen_kfold data.num_folds=5":
        "k-fold sweeps run in tests/test_sweeps.py; the frozen ResNet18 runs here with +experiment=resnet18_frozen",
    "python -m maskdet.evaluate ckpt_path=outputs/train/runs/<run>/checkpoints/best.ckpt":
        "the data=folder line below runs the same checkpoint with a data override",
    "python -m maskdet.evaluate ckpt_path=... +data.subset.gender=female data.cap_per_class=200":
        "subsets run in tests/test_bias.py::test_evaluate_reproduces_the_run_and_evaluates_subsets; "
        "the data=folder line runs here",
    "python -m maskdet.predict ckpt_path=outputs/train/runs/<run>/checkpoints/best.ckpt input=/photos/crops":
        "a folder input runs in tests/test_predict_and_export.py::test_predict_a_folder_with_good_and_bad_files; the glob "
        "line runs here",
    "python -m maskdet.predict ckpt_path=... input=group.jpg detect=true":
        "photos run in tests/test_detect.py::test_predict_detect_on_photos_and_a_video; the video line runs here",
    "python -m maskdet.train ckpt_path=outputs/train/runs/<run>/checkpoints/last.ckpt":
        "a killed run resumed: tests/test_faults.py::test_a_run_killed_between_epochs_resumes_to_exactly_the_uninterrupted_result",
    "maskdet-train --config-dir my_conf +experiment=my_exp":
        "the same experiment runs with data=folder (the next line) from an installed wheel in tests/test_install.py",
    "maskdet-train --config-dir my_conf +experiment=my_exp data=folder data.root=/data/faces":
        "runs from an installed wheel in "
        "tests/test_install.py::test_an_installed_wheel_trains_a_user_experiment_from_another_directory",
    "python -m maskdet.predict ckpt_path=... input=/photos detect=true detector=onnx detector.model_path=yunet.onnx":
        "needs a YuNet ONNX file from the OpenCV model zoo, which cannot be had here; tests/test_detect.py "
        "checks the refusal of a missing or wrong file",
}

# Commands that cannot run in a test, and why; each is checked as far as it can be.
NOT_RUNNABLE = {
    "tensorboard --logdir outputs":
        "starts a server that runs until stopped; test_tensorboard_reads_the_runs reads the same folder",
    "source .venv/bin/activate": "changes the calling shell",
    "wandb sync": "uploads offline runs to a W&B account over the network",
    "python tests/test_compare_statistics.py 200": "the README's simulation tables (about 5 minutes); the same "
        "simulations run smaller in tests/test_compare_statistics.py",
}
# `make TARGET` runs as `make -n` (the target exists, its recipe expands), `pip install` is checked against
# pyproject's extras (no network here), `pytest` collects without running, and `python benchmarks/X.py`
# (minutes of measurement) is checked to exist with the sub-commands it is given: see the tests below.
DRY_RUN_PROGRAMS = {"make", "pip", "pytest", "benchmark"}

# Code spans of the prose that look like overrides but are not (composed otherwise).
NOT_OVERRIDES = {
    "+experiment=NAME": "NAME stands for any experiment; each real one is composed",
    "weights_only=True": "an argument of torch.load, not a setting",
    "data.nonexistent=1": "a key that does not exist, on purpose: the refusal benchmarks/startup.py times",
    "data.synthetic.per_class=3": "a key that moved, on purpose: refused with its new name (tests/test_preflight.py)",
}

TRAIN_RUN = Command("python -m maskdet.train", 0, inline=False)  # <run> and <a>
QUICK_RUN = Command("python -m maskdet.train data.source.per_class=200 trainer.max_epochs=3", 0, inline=False)  # <b>:
# the same (tiny) embedded data as <a>, so that compare may compare them (runs of other data are refused)
SWEEP = Command("python -m maskdet.train -m model.optimizer.lr=1e-3,1e-4 data.fold=0,1,2", 0, inline=False)
KFOLD = Command("python -m maskdet.train -m data.fold=0,1,2,3,4 data.num_folds=5", 0, inline=False)  # <kfold>
RUN_NAME = re.compile(r"^\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_[0-9a-f]{6}$")  # outputs/<task>/runs/<timestamp>_<id>


def _maskdet(cmd: Command) -> bool:
    return cmd.program == "maskdet"


def _program(cmd: Command) -> str:
    """`benchmark` for `python benchmarks/X.py ...`, else the command's program."""
    if cmd.program in ("python", "python3") and cmd.args[:1] and cmd.args[0].startswith("benchmarks/"):
        return "benchmark"
    return cmd.program


RUN = [c for c in COMMANDS if _maskdet(c) and c.text not in COMPOSE_ONLY]
HYDRA_COMMANDS = [c for c in COMMANDS if _maskdet(c) and c.entry in HYDRA_ENTRIES]


def _id(cmd: Command) -> str:
    return f"L{cmd.line}:{cmd.text}"


# --------------------------------------------------------------------------------------------- composing

def _dummy(arg: str) -> str:
    """Placeholders made into plain words, for composing only (`<run>` -> `run`, `ckpt_path=...` -> a name)."""
    return re.sub(r"<([^>]*)>", r"\1", arg).replace("=...", "=placeholder.ckpt")


def _jobs(overrides: list[str]) -> list[list[str]]:
    """The override lists of each job of a sweep (one list for a single run), as Hydra's basic sweeper splits it."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def compose_entry(entry: str, overrides: list[str], user_conf: Path | None = None):
    """The entry point's config as its command line composes it (`--config-dir` adds user_conf)."""
    search = [f"hydra.searchpath=[file://{user_conf.resolve()}]"] if user_conf else []
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=HYDRA_ENTRIES[entry], overrides=[*search, *overrides], return_hydra_config=True)


def write_readme_files(root: Path) -> Path:
    for name, content in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content)
    return root


@pytest.fixture(scope="module")
def readme_root(tmp_path_factory) -> Path:
    """A folder holding the config files the README shows, for composing commands that use them."""
    return write_readme_files(tmp_path_factory.mktemp("readme_files"))


# ------------------------------------------------------------------------------------------------ checks

def test_the_readme_has_commands():
    assert len(COMMANDS) > 20 and any(c.text == TRAIN_RUN.text for c in COMMANDS)


def test_every_readme_command_is_checked():
    """A README command is run, composed, dry-run or listed with its reason; nothing else is allowed."""
    unknown = []
    for cmd in COMMANDS:
        if _maskdet(cmd):
            if cmd.entry not in HYDRA_ENTRIES and cmd.entry not in ARGPARSE_ENTRIES:
                unknown.append(f"L{cmd.line} `{cmd.text}`: entry point maskdet.{cmd.entry} unknown to this test")
        elif cmd.text not in NOT_RUNNABLE and _program(cmd) not in DRY_RUN_PROGRAMS:
            unknown.append(f"L{cmd.line} `{cmd.text}`: run it here or list it in NOT_RUNNABLE with the reason")
    assert not unknown, "README commands this test does not check:\n" + "\n".join(unknown)


def test_listed_commands_are_still_in_the_readme():
    texts = {c.text for c in COMMANDS}
    spans = {span for _, span in override_spans(README)}
    stale = [t for t in [*COMPOSE_ONLY, *NOT_RUNNABLE] if t not in texts] + [t for t in NOT_OVERRIDES if t not in spans]
    assert not stale, f"listed here but no longer in README.md (remove them): {stale}"


@pytest.mark.parametrize("cmd", HYDRA_COMMANDS, ids=_id)
def test_every_override_of_a_command_composes(cmd, readme_root):
    """Misspelt keys, missing config groups and wrong values fail here in a fraction of a second."""
    user_conf = config_dir(cmd.args)
    for job in _jobs([_dummy(a) for a in cmd.overrides])[:12]:
        compose_entry(cmd.entry, job, readme_root / user_conf if user_conf else None)


@pytest.mark.parametrize("line,span", [s for s in override_spans(README) if s[1] not in NOT_OVERRIDES],
                         ids=lambda v: str(v))
def test_every_override_in_the_prose_composes(line, span):
    """`model.weights=null`, `data.balance_by=[gender]`: each composes with at least one entry point's config.
    A key named without a value (`detector=`, `detector.model_path=`) is a mention: its group must exist."""
    if span.endswith("=") and " " not in span:
        head = span.lstrip("+~").split(".")[0].split("/")[0].rstrip("=")
        assert (CONF / head).is_dir() or any(head in compose_entry(e, []) for e in HYDRA_ENTRIES), span
        return
    errors = []
    for job in _jobs([w for w in span.split() if w != "-m"]):
        for entry in HYDRA_ENTRIES:
            try:
                compose_entry(entry, job)
                break
            except Exception as error:  # noqa: BLE001 - collected, shown if no entry point accepts it
                errors.append(f"{entry}: {error}")
        else:
            pytest.fail(f"README line {line}: `{span}` composes with no entry point:\n" + "\n".join(errors))


@pytest.mark.parametrize("cmd", [c for c in COMMANDS if c.program == "make"], ids=_id)
def test_make_targets_exist(cmd):
    result = subprocess.run(["make", "-n", *cmd.args], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"`{cmd.text}` (README line {cmd.line}): {result.stderr}"


@pytest.mark.parametrize("cmd", [c for c in COMMANDS if c.program == "pip"], ids=_id)
def test_pip_installs_name_existing_extras(cmd):
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    packages = [a for a in cmd.args if a not in ("install", "-e", "-U", "--upgrade")]
    assert packages and all(p.split("[")[0] in ("maskdet", ".") for p in packages), cmd.text
    named = [e for p in packages for e in re.findall(r"\[([^\]]+)\]", p) for e in e.split(",")]
    assert set(named) <= set(extras), f"`{cmd.text}`: extras {named}, pyproject has {sorted(extras)}"


@pytest.mark.parametrize("cmd", [c for c in COMMANDS if _program(c) == "benchmark"], ids=_id)
def test_benchmark_scripts_exist_with_their_sub_commands(cmd):
    script = REPO / cmd.args[0]
    assert script.is_file(), f"README line {cmd.line}: {cmd.args[0]} does not exist"
    args = cmd.args[1:]  # sub-commands: the words that are neither options nor an option's value
    words = [a for i, a in enumerate(args) if not a.startswith("-") and not (i and args[i - 1].startswith("--"))]
    assert all(f'"{w}"' in script.read_text() for w in words), f"`{cmd.text}`: {words} not in {script.name}"


@pytest.mark.slow
@pytest.mark.parametrize("cmd", [c for c in COMMANDS if c.program == "pytest"], ids=_id)
def test_pytest_commands_collect(cmd):
    """The command as written (`.venv/bin/pytest`, not `python -m pytest`, which would add the working
    directory to the import path), collecting only."""
    program = REPO / cmd.argv[0] if (REPO / cmd.argv[0]).is_file() else Path(sys.executable).parent / "pytest"
    result = subprocess.run([str(program), *cmd.args, "--collect-only", "-q", "-p", "no:cacheprovider"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and " collected" in result.stdout, result.stdout[-3000:] + result.stderr[-2000:]


# ----------------------------------------------------------------------------------------------- running

@dataclass
class Outcome:
    argv: list[str]
    returncode: int
    output: str
    new: list[Path]  # folders this command created (run folders, sweep folders, --out folders)

    def ok(self) -> Outcome:
        assert self.returncode == 0, f"exit {self.returncode}: {' '.join(self.argv)}\n{self.output[-4000:]}"
        return self

    def folders(self, pattern: str) -> list[Path]:
        return [p for p in self.new if p.match(pattern)]


class Workspace:
    """A user's working directory: every README command runs here, in README order, each once."""

    def __init__(self, root: Path, faces: Path):
        self.root, self.faces, self.outcomes = root, faces, {}
        self.env = {**os.environ, "PYTHONPATH": str(REPO)}
        for name in ("MASKDET_ROOT", "MASKDET_CACHE_DIR"):  # defaults: the working directory, as documented
            self.env.pop(name, None)
        from PIL import Image

        write_readme_files(root)
        (root / "crops").mkdir()
        (root / "shots").mkdir()
        for i, image in enumerate(sorted(faces.rglob("*.jpg"))[:6]):  # /photos/crops and shots/*.png
            (root / "crops" / f"{i}.jpg").write_bytes(image.read_bytes())
            Image.open(image).save(root / "shots" / f"{i}.png")

    # placeholders -------------------------------------------------------------------------------------
    def run_dir(self, cmd: Command = TRAIN_RUN) -> Path:
        (run,) = self.execute(cmd).ok().folders("outputs/train/runs/*")
        return run

    def sweep_dir(self) -> Path:
        (sweep,) = self.execute(SWEEP).ok().folders("outputs/train/multiruns/*")
        return sweep

    def kfold_dir(self) -> Path:
        (sweep,) = self.execute(KFOLD).ok().folders("outputs/train/multiruns/*")
        return sweep

    def substitute(self, arg: str) -> str:
        values = {  # README placeholder -> what stands for it here (computed when first needed)
            "<run>": lambda: self.run_dir().name,
            "<a>": lambda: self.run_dir().name,
            "<b>": lambda: self.run_dir(QUICK_RUN).name,
            "<sweep>": lambda: self.sweep_dir().name,
            "<kfold>": lambda: self.kfold_dir().name,
            "/data/faces": lambda: str(self.faces),
            "/other/faces": lambda: str(self.faces),
            "/my/faces": lambda: str(self.faces),
            "/photos/crops": lambda: str(self.root / "crops"),
            "/tmp/faces": lambda: str(self.root / "written_faces"),
            "group.jpg": lambda: self.photo("group.jpg"),
            "street.mp4": lambda: self.video("street.mp4"),
        }
        if arg == "ckpt_path=...":  # "..." in README: the checkpoint of the line above
            arg = "ckpt_path=outputs/train/runs/<run>/checkpoints/best.ckpt"
        arg = re.sub("|".join(map(re.escape, values)), lambda found: values[found.group()](), arg)
        assert not re.search(r"<[^>]*>|\.\.\.", arg), f"README placeholder in {arg!r}: give it a value in substitute()"
        return arg

    def photo(self, name: str) -> str:
        """A real photograph with a face (scikit-image's astronaut), for detect=true."""
        from PIL import Image
        from skimage import data

        if not (self.root / name).exists():
            Image.fromarray(data.astronaut()).resize((256, 256)).save(self.root / name)
        return name

    def video(self, name: str) -> str:
        """Ten frames of the astronaut panning, written with OpenCV (the detect extra's own writer)."""
        import cv2
        from skimage import data

        if not (self.root / name).exists():
            frame = cv2.cvtColor(cv2.resize(data.astronaut(), (256, 256)), cv2.COLOR_RGB2BGR)
            writer = cv2.VideoWriter(str(self.root / name), cv2.VideoWriter_fourcc(*"mp4v"), 10, (256, 256))
            for shift in range(10):
                writer.write(cv2.copyMakeBorder(frame, 0, 0, shift * 4, 0, cv2.BORDER_REPLICATE)[:, :256])
            writer.release()
        return name

    # tiny sizes ---------------------------------------------------------------------------------------
    def weights_file(self, architecture: str) -> str:
        """A torchvision state dict of the architecture (random weights): offline, as the README documents."""
        import torch
        import torchvision

        path = self.root / "weights" / f"{architecture}.pth"
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            torch.save(torchvision.models.get_model(architecture, weights=None).state_dict(), path)
        return str(path)

    def compose(self, entry: str, args: list[str]):
        user_conf = config_dir(args)
        return compose_entry(entry, _jobs([a for a in args if "=" in a])[0], self.root / user_conf if user_conf else None)

    def tiny(self, cmd: Command, args: list[str]) -> list[str]:
        """The command's arguments with tiny sizes: two sweep jobs at most, small data, one epoch."""
        if cmd.entry == "data.synthetic":
            return [*args, "--per-class", "5", "--size", "48"]
        if cmd.entry not in HYDRA_ENTRIES:
            return args
        cut, keep = [], 2  # the first swept key keeps two values, the others one
        for arg in args:
            parsed = OverridesParser.create().parse_overrides([arg])[0] if OVERRIDE.match(arg) else None
            if parsed is not None and parsed.is_sweep_override():
                arg = f"{arg.split('=')[0]}={','.join(list(parsed.sweep_string_iterator())[:keep])}"
                keep = 1
            cut.append(arg)
        cfg = self.compose(cmd.entry, cut)
        sizes: dict = {}
        if cmd.entry in ("train", "data"):
            if "per_class" in cfg.data.source:  # the embedded dataset: generated at the size asked for
                sizes |= {"data.source.per_class": 20, "data.source.size": 48}
            else:  # any other source reads the root the command names, which is the tiny dataset here
                assert cfg.data.root == str(self.faces), f"`{cmd.text}`: give its data tiny sizes in tiny()"
        if cmd.entry == "train":
            sizes |= {"trainer.max_epochs": 1, "data.image_size": 32, "data.num_folds": 2 if cmd.multirun else 3,
                      "callbacks.explanations": "null"}
            weights = cfg.model.weights
            if weights is not None and not Path(str(weights)).suffix:  # a torchvision name: needs the network
                sizes["model.weights"] = self.weights_file(cfg.model.architecture)
            if "n_trials" in cfg.hydra.sweeper:
                sizes |= {"hydra.sweeper.n_trials": 2, "hydra.sweeper.sampler.n_startup_trials": 2}
            if "n_jobs" in cfg.hydra.launcher:
                sizes["hydra.launcher.n_jobs"] = 2
        if cmd.entry == "explain":
            sizes |= {"explain.per_class": 2, "explain.gallery_size": 8}
        for key, value in sizes.items():
            cut = replace_override(cut, key, value)
        return cut

    def argv(self, cmd: Command) -> list[str]:
        args = self.tiny(cmd, [self.substitute(a) for a in cmd.args])
        console = Path(sys.executable).parent / cmd.argv[0]
        if cmd.argv[0].startswith("maskdet-") and console.is_file():
            return [str(console), *args]
        return [sys.executable, "-m", f"maskdet.{cmd.entry}", *args]

    # running ------------------------------------------------------------------------------------------
    def folders(self) -> set[Path]:
        made = {p.relative_to(self.root) for p in self.root.glob("outputs/*/*runs/*") if p.is_dir()}
        return made | {p.relative_to(self.root) for p in self.root.iterdir() if p.is_dir()}

    def execute(self, cmd: Command) -> Outcome:
        if cmd.text not in self.outcomes:
            argv = self.argv(cmd)  # may run the commands it depends on first (<run>, <sweep>)
            before = self.folders()
            result = commands.run(argv, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=900)
            self.outcomes[cmd.text] = Outcome(argv, result.returncode, result.stdout + result.stderr,
                                              sorted(self.root / p for p in self.folders() - before))
        return self.outcomes[cmd.text]


@pytest.fixture(scope="module")
def workspace(tiny_dataset, tmp_path_factory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("readme_user"), tiny_dataset)


def _expected_jobs(cfg, args: list[str]) -> int:
    """Jobs of a sweep: Optuna's trials, or the product of the swept values (command and experiment)."""
    if "n_trials" in cfg.hydra.sweeper:
        return cfg.hydra.sweeper.n_trials
    params = cfg.hydra.sweeper.get("params")
    params = OmegaConf.to_container(params, resolve=True) if params else {}
    swept = [a for a in args if OVERRIDE.match(a)] + [f"{k}={v}" for k, v in params.items()]
    parsed = OverridesParser.create().parse_overrides(swept)
    return math.prod(len(list(o.sweep_string_iterator())) for o in parsed if o.is_sweep_override())


RUN_FILES = ["metrics.json", "checkpoints/best.ckpt", "checkpoints/last.ckpt", "predictions.csv", ".hydra/config.yaml",
             "data_report.json", "classification_report.txt", "confusion_matrix.png", "confusion_matrix.csv",
             "bias_report.md", "bias_report.csv", "bias_report.json", "bias.png", "train.log"]
COMPARISON_FILES = ["comparison.md", "comparison.csv", "comparison.json", "comparison_configurations.csv",
                    "comparison.png"]


def _check_outputs(cmd: Command, outcome: Outcome, workspace: Workspace) -> None:
    """The outputs the README promises for the command, where they are cheap to check."""
    args = outcome.argv[3:] if outcome.argv[1:2] == ["-m"] else outcome.argv[1:]
    if cmd.entry == "train":
        cfg = workspace.compose("train", args)
        task = cfg.task_name
        kind = "multiruns" if cmd.multirun else "runs"
        (folder,) = outcome.folders(f"outputs/{task}/{kind}/*")  # outputs/<task_name>/(multi)runs/<time>_<id>
        assert RUN_NAME.match(folder.name), folder
        if not cmd.multirun:
            missing = [f for f in RUN_FILES if not (folder / f).is_file()]
            assert not missing and list((folder / "tensorboard").glob("events.out.tfevents.*")), missing
            if "bias_study" in cmd.text:
                assert (folder / "bias_study.md").is_file()
            return
        jobs = [p for p in folder.iterdir() if p.is_dir() and re.match(r"^\d+_", p.name)]
        assert len(jobs) == _expected_jobs(cfg, args), sorted(p.name for p in jobs)
        assert all((job / "metrics.json").is_file() for job in jobs)
        missing = [f for f in ["cv_summary.csv", "cv_summary.md", *COMPARISON_FILES] if not (folder / f).is_file()]
        assert not missing and list((folder / "tensorboard").glob("events.out.tfevents.*")), missing
        status = pd.read_csv(folder / "cv_summary.csv")["status"].dropna()  # "ok" per job, "2 ok, 0 failed" per group
        assert len(status) and all(s == "ok" or re.fullmatch(r"\d+ ok, 0 failed", s) for s in status), list(status)
    elif cmd.entry in ("evaluate", "predict", "export", "explain", "data"):
        task = {"data": "data_report"}.get(cmd.entry, cmd.entry)
        (folder,) = outcome.folders(f"outputs/{task}/runs/*")
        assert RUN_NAME.match(folder.name), folder
        expected = {"evaluate": ["predictions.csv", "bias_report.md", "bias_report.json"],
                    "predict": ["predictions.csv", "skipped.csv"],
                    "export": ["model.onnx", "model.json", "model_card.md"],
                    "data": ["data_report.json", "splits.csv"], "explain": []}[cmd.entry]
        missing = [f for f in expected if not (folder / f).is_file()]
        assert not missing, f"{missing} not in {sorted(p.name for p in folder.iterdir())}"
        if cmd.entry == "predict" and "detect=true" in cmd.args:  # faces found in photos and videos
            frames = pd.read_csv(folder / "frames.csv")
            assert len(frames) and list((folder / "annotated").iterdir()), frames
            if "every_n_frames=5" in cmd.args:
                assert len(frames) == 2, frames  # frames 0 and 5 of the ten
        elif cmd.entry == "predict":
            assert len(pd.read_csv(folder / "predictions.csv")) == 6
            if "annotate=true" in cmd.args:
                assert len(list((folder / "annotated").iterdir())) == 6
        if cmd.entry == "explain":
            assert list(folder.rglob("*.png")), "explain wrote no pictures"
    elif cmd.entry == "compare":
        out = workspace.root / args[args.index("--out") + 1] if "--out" in args else workspace.root / args[0]
        missing = [f for f in COMPARISON_FILES if not (out / f).is_file()]
        assert not missing, missing
    elif cmd.entry == "label_issues":
        out = workspace.root / args[0]
        missing = [f for f in ("label_issues.csv", "label_issues.md", "label_issues.png", "label_quality.csv")
                   if not (out / f).is_file()]
        assert not missing, missing
        assert len(pd.read_csv(out / "label_quality.csv")) == 4 * 20  # tiny embedded data, every image held out
    elif cmd.entry == "data.synthetic":
        out = Path(args[args.index("--out") + 1])
        classes = [p for p in out.iterdir() if p.is_dir()]
        assert len(classes) == 4 and all(len(list(c.iterdir())) == 5 for c in classes), classes


@pytest.mark.slow
@pytest.mark.parametrize("cmd", RUN, ids=_id)
def test_readme_command_runs(cmd, workspace):
    outcome = workspace.execute(cmd).ok()
    _check_outputs(cmd, outcome, workspace)


@pytest.mark.slow
def test_tensorboard_reads_the_runs(workspace):
    """`tensorboard --logdir outputs` (a server, not run): the folder it would read holds the runs' curves."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = workspace.run_dir()
    from maskdet.loggers import tb_tag

    tags = EventAccumulator(str(run / "tensorboard")).Reload().Tags()["scalars"]
    assert {tb_tag("val/acc"), tb_tag("test/acc")} <= set(tags), tags
    assert (workspace.root / ".cache" / "maskdet" / "synthetic").is_dir()  # the cache beside outputs/, as documented
