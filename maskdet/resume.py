"""Resuming a run: find its folder, refuse a resume that would change what the run means.

``ckpt_path=<run>/checkpoints/last.ckpt`` continues that run *in its own folder*: the Hydra resolvers below
point ``hydra.run.dir`` at it (so ``train.log`` is appended to and no second folder appears) and keep the
run's saved ``.hydra/`` config as it was. A resume whose data, model or seed settings differ from the run's
saved config is refused before any work, since its test report would describe another experiment.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from maskdet.errors import ConfigError
from maskdet.preflight import read_checkpoint
from maskdet.runfolder import CONFIG, run_of_checkpoint

COMPARED = ("data", "model", "seed")
# Settings that do not change what is trained or tested: where caches live, how evaluation is batched.
IGNORED = {"data.cache_dir", "data.num_workers", "data.eval_batch_size"}


def run_dir_resolver(ckpt_path, default: str) -> str:
    """``hydra.run.dir``: the resumed run's folder, else a new one (``default``)."""
    run = run_of_checkpoint(ckpt_path)
    return str(run) if run is not None else default


def output_subdir_resolver(ckpt_path) -> str | None:
    """``hydra.output_subdir``: None (keep the run's saved config untouched) when resuming a run."""
    return None if run_of_checkpoint(ckpt_path) is not None else ".hydra"


def register_resume_resolvers() -> None:
    """The resolvers conf/hydra/train.yaml uses; registered by the train entry point before Hydra composes."""
    if not OmegaConf.has_resolver("resume_run_dir"):
        OmegaConf.register_new_resolver("resume_run_dir", run_dir_resolver)
        OmegaConf.register_new_resolver("resume_output_subdir", output_subdir_resolver)


@dataclass
class Resume:
    ckpt_path: Path
    run_dir: Path | None
    epoch: int
    global_step: int
    changed: list[str]  # settings that may change on a resume (trainer.max_epochs ...) and did: recorded in metrics.json


def flatten(node, prefix: str) -> dict[str, object]:
    """A nested dict as ``{"prefix.key.sub": value}`` (an empty dict stays a value of its own)."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}.{key}"))
        return out or {prefix: {}}
    return {prefix: node}


def differing_settings(saved: DictConfig, current: DictConfig, sections=COMPARED) -> list[str]:
    """``key: run had X, this command Y`` for each setting of ``sections`` that differs."""
    def settings(cfg):
        out = {}
        for section in sections:
            value = OmegaConf.select(cfg, section, default=None)
            container = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
            out.update(flatten(container, section))
        return {k: v for k, v in out.items() if k not in IGNORED}

    before, after = _normalisation_resolved(settings(saved), settings(current))
    return [f"{key}: run had {before.get(key, '<absent>')!r}, this command {after.get(key, '<absent>')!r}"
            for key in sorted(set(before) | set(after)) if before.get(key, "<absent>") != after.get(key, "<absent>")]


def _normalisation_resolved(saved: dict, current: dict) -> tuple[dict, dict]:
    """``model.mean`` / ``model.std`` null means the weights' own normalisation: compared as the numbers it
    stands for, so a run saved with the numbers (before they came from the weights' metadata) resumes. The
    numbers come from this command's own model config only: a run folder's saved config is data, and naming
    an architecture there must never make maskdet import it. The saved side's null is filled only when it
    names this command's architecture and weights."""
    if all(side.get(key) is not None for side in (saved, current) for key in ("model.mean", "model.std")):
        return saved, current
    from maskdet.models.backbones import weights_normalisation

    same_network = all(saved.get(k) == current.get(k) for k in ("model.architecture", "model.weights"))
    try:
        mean, std = weights_normalisation(str(current.get("model.architecture")), current.get("model.weights"))
    except Exception:  # noqa: BLE001 - an architecture that cannot be resolved is refused by the model itself
        return saved, current
    for side in (current, saved) if same_network else (current,):
        for key, value in (("model.mean", mean), ("model.std", std)):
            if side.get(key) is None:
                side[key] = [float(v) for v in value]
    return saved, current


def check_resume(cfg: DictConfig) -> Resume | None:
    """For ``ckpt_path``: load it (safely), and refuse it with a reason if it cannot continue this run."""
    if not cfg.get("ckpt_path"):
        return None
    path = Path(cfg.ckpt_path).expanduser()
    checkpoint = read_checkpoint(path)
    if "optimizer_states" not in checkpoint or "loops" not in checkpoint:
        raise ConfigError(f"ckpt_path={path} holds no training state (optimizer, loops), so training cannot resume "
                          "from it: resume from <run>/checkpoints/last.ckpt (best.ckpt holds weights only; "
                          "use it with maskdet.evaluate, predict or export).")
    run = run_of_checkpoint(path)
    changed = []
    if run is not None:
        saved = OmegaConf.load(run / CONFIG)
        differences = differing_settings(saved, cfg)
        changed = differing_settings(saved, cfg, ("trainer",))
        if differences:
            raise ConfigError(
                f"Refusing to resume {path}: this command's settings differ from the run's own "
                f"({run / '.hydra' / 'config.yaml'}), so the resumed run would report on another experiment. "
                f"Differing: {'; '.join(differences)}. Resume with the run's settings, or start a new run "
                "(without ckpt_path).")
    return Resume(path, run, int(checkpoint.get("epoch", 0)), int(checkpoint.get("global_step", 0)), changed)
