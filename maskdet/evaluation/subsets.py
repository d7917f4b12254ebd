"""The COMP6721 study's bias analysis: accuracy on capped demographic subsets of the test split, compared in pairs.

That study reported male 82 % vs female 73 % and white 77 % vs black 74 % with no uncertainty; here each
subset's accuracy has a Wilson interval and each pair a Newcombe interval of the difference and a
two-proportion z-test. Subsets filter the already-assigned test split, so no training image is scored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import lightning as L
import pandas as pd

from maskdet.evaluation.statistics import newcombe_interval, two_proportion_test, wilson_interval
from maskdet.writing import md, write_csv, write_text


def compare_subsets(trainer: L.Trainer, model, make_datamodule: Callable[..., object], subsets: Mapping[str, Mapping],
                    compare: Sequence[Sequence[str]], cap_per_class: int | None, output_dir: Path) -> str:
    """Test ``model`` on each subset; write bias_study.csv / .md; return the markdown table."""
    rows = {}
    for name, subset in subsets.items():
        datamodule = make_datamodule(subset=dict(subset), cap_per_class=cap_per_class)
        datamodule.setup("test")
        trainer.test(model, datamodule=datamodule, verbose=False)
        rows_, probs = model.test_predictions()
        labels = datamodule.index.loc[rows_.numpy(), "label"].to_numpy()
        correct = int((probs.argmax(1).numpy() == labels).sum())
        low, high = wilson_interval(correct, len(labels))
        rows[name] = {"subset": name, "filter": dict(subset), "n": len(labels), "correct": correct,
                      "accuracy": correct / max(len(labels), 1), "accuracy_low": low, "accuracy_high": high,
                      "per_class": datamodule.index.loc[rows_.numpy(), "label_name"].value_counts().to_dict()}
    pairs = []
    for a, b in compare:
        ra, rb = rows[a], rows[b]
        z, p = two_proportion_test(ra["correct"], ra["n"], rb["correct"], rb["n"])
        low, high = newcombe_interval(ra["correct"], ra["n"], rb["correct"], rb["n"])
        pairs.append({"comparison": f"{a} - {b}", "difference": ra["accuracy"] - rb["accuracy"],
                      "difference_low": low, "difference_high": high, "z": z, "p_value": p})
    write_csv(pd.DataFrame(rows.values()), output_dir / "bias_study.csv")
    write_csv(pd.DataFrame(pairs), output_dir / "bias_study_pairs.csv")
    lines = [f"# Bias study (test split, at most {cap_per_class} images per class per subset)", "",
             "| subset | n | accuracy [95 % Wilson] | images per class |", "|---|---|---|---|"]
    for r in rows.values():
        per_class = ", ".join(f"{md(k)} {v}" for k, v in sorted(r["per_class"].items()))
        lines.append(f"| {md(r['subset'])} | {r['n']} | {r['accuracy']:.4f} [{r['accuracy_low']:.4f}, {r['accuracy_high']:.4f}] | {per_class} |")
    lines += ["", "| comparison | difference [95 % Newcombe] | z | p-value |", "|---|---|---|---|"]
    for p in pairs:
        lines.append(f"| {md(p['comparison'])} | {p['difference']:+.4f} [{p['difference_low']:+.4f}, "
                     f"{p['difference_high']:+.4f}] | {p['z']:.2f} | {p['p_value']:.3g} |")
    text = "\n".join(lines) + "\n"
    write_text(output_dir / "bias_study.md", text)
    return text
