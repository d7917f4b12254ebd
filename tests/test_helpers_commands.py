"""The tests' forked commands (tests/helpers/commands.py) answer as fresh interpreters do."""

from __future__ import annotations

import json
import os
import sys

from tests.conftest import cli_env
from tests.helpers import commands


def test_a_forked_command_answers_as_a_fresh_interpreter(tmp_path):
    env = {**cli_env(tmp_path / "cache", tmp_path), "PYTHONPATH": os.pathsep.join([str(tmp_path / "extra"),
                                                                                   cli_env(tmp_path, tmp_path)["PYTHONPATH"]])}
    argv = [sys.executable, "-m", "maskdet.train", "data.batch_size=0", "data.num_folds=1"]
    forked, fresh = (commands.run(argv, env=env, cwd=tmp_path, fresh=f, timeout=120) for f in (False, True))
    assert forked.returncode == fresh.returncode == 1
    assert forked.stdout == fresh.stdout and forked.stderr == fresh.stderr, (forked.stderr, fresh.stderr)
    assert "data.batch_size=0 must be a whole number of at least 1" in forked.stderr
    assert not list(tmp_path.glob("outputs/*/runs/*"))  # and left no run folder behind, in either way
    # a whole (tiny) run: the same exit status, console lines and numbers either way (the first builds the caches)
    tiny = [sys.executable, "-m", "maskdet.train", "data.source.per_class=6", "data.source.size=32",
            "data.num_folds=3", "trainer.max_epochs=1", "~logger", "callbacks.explanations=null"]
    done = {}
    for way in ("forked", "fresh"):
        result = commands.run([*tiny, f"task_name={way}"], env=env, cwd=tmp_path, fresh=way == "fresh", timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        (run,) = tmp_path.glob(f"outputs/{way}/runs/*")
        metrics = json.loads((run / "metrics.json").read_text())
        done[way] = ([line for line in result.stdout.splitlines() if line.startswith(("epoch", "data:", "trained"))],
                     metrics["test"], sorted(p.name for p in run.iterdir()))
    assert done["forked"] == done["fresh"]
