"""The tests' forked commands (tests/helpers/commands.py) answer as fresh interpreters do."""

from __future__ import annotations

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
    seen = commands.run([sys.executable, "-m", "maskdet.train", "--help"], env=env, cwd=tmp_path, timeout=120)
    assert seen.returncode == 0 and "maskdet" in seen.stdout
