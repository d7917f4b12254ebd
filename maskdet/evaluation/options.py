"""The options of the bias audit (``bias.*``) and of the comparison a sweep writes when it ends
(``comparison.*``): settings objects that check themselves when built.

Light on purpose (no pandas, scipy or matplotlib): ``maskdet.preflight`` builds them before an entry point
imports anything heavy, so a wrong value is refused in about a second, and the audit and the comparison build
the same objects, so a rule lives here only. The defaults are those of ``maskdet/conf/bias/default.yaml`` and
``maskdet/conf/comparison/default.yaml`` (``config.packaged_defaults``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from maskdet.config import packaged_defaults
from maskdet.errors import ConfigError

_BIAS = packaged_defaults("bias/default.yaml")
_COMPARISON = packaged_defaults("comparison/default.yaml")

# The attributes an audit can group by (bias.with_group_columns makes them).
AUDITABLE_ATTRIBUTES = ("gender", "race", "age_group", "gender_x_race")
CORRECTIONS = {"holm": "Holm (family-wise error rate)", "fdr_bh": "Benjamini-Hochberg (false discovery rate)"}
COMPARISON_METRICS = {"accuracy": "accuracy", "macro_f1": "macro-F1", "ece": "ECE", "gap": "gap"}


def _is_whole(value, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _is_level(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 1


def _as_list(value) -> list | None:
    from omegaconf import OmegaConf

    return list(value) if isinstance(value, list | tuple) or OmegaConf.is_list(value) else None


@dataclass(frozen=True)
class BiasOptions:
    """The bias audit's options (keyword arguments of ``maskdet.evaluation.bias.audit``; the calibration,
    abstention and robustness reports share attributes, min_group_size, alpha, n_bootstrap and seed)."""

    attributes: Sequence[str] = tuple(_BIAS["attributes"])
    min_group_size: int = _BIAS["min_group_size"]
    metrics: Sequence[str] = tuple(_BIAS["metrics"])
    n_bootstrap: int = _BIAS["n_bootstrap"]
    seed: int = _BIAS["seed"]
    primary_metric: str = _BIAS["primary_metric"]
    correction: Literal["holm", "fdr_bh"] = _BIAS["correction"]
    alpha: float = _BIAS["alpha"]

    def __post_init__(self):
        from maskdet.evaluation.metrics import resolve_group_metrics

        valid = ", ".join(AUDITABLE_ATTRIBUTES)
        attributes = _as_list(self.attributes)
        if attributes is None:
            raise ConfigError(f"bias.attributes={self.attributes!r} must be a list of attributes, e.g. "
                              f"bias.attributes=[gender] (valid: {valid}).")
        unknown = [str(a) for a in attributes if a not in AUDITABLE_ATTRIBUTES]
        if unknown:
            raise ConfigError(f"bias.attributes: {', '.join(unknown)} is not an attribute the bias audit knows: "
                              f"use any of {valid} (e.g. bias.attributes=[gender,race]).")
        metrics = _as_list(self.metrics)
        resolve_group_metrics(self.metrics if metrics is None else metrics)  # refuses an unknown figure
        if not (self.primary_metric == "accuracy" or str(self.primary_metric).startswith("recall_")):
            raise ConfigError(f"bias.primary_metric={self.primary_metric!r}: the gap test compares proportions; use "
                              "accuracy (the default) or recall_<class name>.")
        if self.correction not in CORRECTIONS:
            raise ConfigError(f"bias.correction={self.correction!r}: use one of {', '.join(CORRECTIONS)}.")
        if not _is_level(self.alpha):
            raise ConfigError(f"bias.alpha={self.alpha!r} must be a number between 0 and 1 (the family's level, "
                              "e.g. 0.05).")
        for key in ("min_group_size", "n_bootstrap"):
            if not _is_whole(getattr(self, key), 1):
                raise ConfigError(f"bias.{key}={getattr(self, key)!r} must be a whole number of at least 1 (the "
                                  f"defaults are min_group_size={_BIAS['min_group_size']}, "
                                  f"n_bootstrap={_BIAS['n_bootstrap']}).")
        object.__setattr__(self, "attributes", tuple(attributes))
        object.__setattr__(self, "metrics", tuple(metrics) if metrics is not None else self.metrics)


@dataclass(frozen=True)
class ComparisonOptions:
    """The comparison's options (keyword arguments of ``maskdet.evaluation.compare.write_comparison`` and the
    options of ``python -m maskdet.compare``)."""

    primary_metric: str = _COMPARISON["primary_metric"]
    correction: str = _COMPARISON["correction"]
    alpha: float = _COMPARISON["alpha"]
    primary_attribute: str | None = _COMPARISON["primary_attribute"]
    n_boot: int = _COMPARISON["n_boot"]
    seed: int = _COMPARISON["seed"]

    def __post_init__(self):
        if self.primary_metric not in COMPARISON_METRICS:
            raise ConfigError(f"primary metric {self.primary_metric!r}: use one of {', '.join(COMPARISON_METRICS)}.")
        if self.correction not in CORRECTIONS:
            raise ConfigError(f"correction {self.correction!r}: use one of {', '.join(CORRECTIONS)} (holm: "
                              "family-wise error; fdr_bh: false discovery rate).")
        if not _is_level(self.alpha):
            raise ConfigError(f"alpha {self.alpha!r} must be a number between 0 and 1, e.g. 0.05.")
        if not _is_whole(self.n_boot, 200):
            raise ConfigError(f"bootstrap resamples {self.n_boot!r}: give a whole number of at least 200 "
                              f"(default {_COMPARISON['n_boot']}).")
        if not _is_whole(self.seed, 0):
            raise ConfigError(f"seed {self.seed!r} must be a whole number of at least 0.")


BIAS = BiasOptions()  # the defaults, for the reports that share them
COMPARISON = ComparisonOptions()
