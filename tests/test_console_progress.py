"""A long run speaks when its console is not a terminal: plain lines for each long stage and each epoch,
no carriage-return bars (the output here is a pipe, as under CI, nohup or SLURM)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, cli_env


@pytest.mark.slow
def test_training_into_a_pipe_prints_a_line_per_stage_and_per_epoch(tmp_path):
    env = cli_env(tmp_path / "fresh_cache", tmp_path)
    done = subprocess.run([sys.executable, "-m", "maskdet.train", "data.source.per_class=15", "data.num_folds=3",
                           "trainer.max_epochs=3", "callbacks.explanations=null"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "generating 60 embedded images" in out and re.search(r"generating 60 embedded images.*: done in", out)
    shown = re.search(r"generating 60 embedded images into (\S+?):? ", out).group(1)  # the dataset's folder, not
    assert Path(shown).parent == tmp_path / "fresh_cache" / "synthetic" and Path(shown).is_dir()  # its hidden tmp
    assert re.search(r"decoding .*: done in", out), out
    epochs = re.findall(r"^epoch (\d)/3: (\d+s|\dm\d\ds) elapsed(, ETA [^;]+)?; train/loss \d\.\d{4}.*val/acc \d\.\d{4}",
                        out, flags=re.M)
    assert [e[0] for e in epochs] == ["1", "2", "3"], out
    assert "\r" not in out + done.stderr
