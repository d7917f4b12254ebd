"""Run maskdet's commands in the tests as child processes, with torch and Lightning imported once per worker.

Every command still runs in a process of its own, with its own argv, environment, working folder, standard
streams and exit status, through the module's ``__main__`` as ``python -m maskdet.<command>`` runs it; only
the imports are shared. The processes are forked from multiprocessing's forkserver, which imported torch,
Lightning and maskdet's training modules once: that saves about 5 s of imports per command on this 2-core
machine, most of the suite's time before (issue 25).

A forked child is not a new interpreter: it shares the server's hash seed, numpy's global random state and
what was imported (and any warning printed while importing), and environment variables read at start-up
(PYTHONHASHSEED, PYTHONWARNINGS, OMP_NUM_THREADS...) are the server's. So a fresh interpreter runs what
depends on those: ``fresh=True`` (what a command imports, runs compared for determinism), the console
scripts a user types (``maskdet-train``), any command whose environment changes such a variable, and any
argv that is not ``python -m maskdet...``. ``MASKDET_TEST_FRESH_PROCESSES=1`` runs every command fresh.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import tempfile

PRELOAD = ["maskdet.training", "maskdet.evaluation.holdout", "maskdet.preflight"]  # libraries, not the entry modules run
_context = None
START_UP = ("PYTHON", "OMP_", "MKL_", "OPENBLAS_", "CUDA_", "TORCH_")  # read when the interpreter or torch starts


def _forkserver():
    """The forkserver context, and the start-up variables its server (started with the first command) has."""
    global _context
    if _context is None:
        _context = (multiprocessing.get_context("forkserver"), _start_up(os.environ))
        _context[0].set_forkserver_preload(PRELOAD)
    return _context


def run(argv: list, *, env: dict | None = None, cwd=None, timeout: float = 600, fresh: bool = False,
        check: bool = False, capture_output: bool = True, text: bool = True) -> subprocess.CompletedProcess:
    """``subprocess.run(argv, capture_output=True, text=True, ...)``: ``[sys.executable, "-m", "maskdet.<x>",
    ...]`` forked from the server, everything else (module docstring) in a fresh process."""
    assert capture_output and text, "commands.run always captures the output as text"
    argv = [str(a) for a in argv]
    forkable = len(argv) >= 3 and argv[0] == sys.executable and argv[1] == "-m" and argv[2].startswith("maskdet")
    fresh = fresh or not forkable or os.environ.get("MASKDET_TEST_FRESH_PROCESSES") == "1"
    if not fresh:
        context, server_start_up = _forkserver()
        fresh = _start_up(env or os.environ) != server_start_up
    if fresh:
        return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=check)
    with tempfile.TemporaryDirectory(prefix="maskdet-command-") as folder:
        out, err = os.path.join(folder, "stdout"), os.path.join(folder, "stderr")
        for path in (out, err):
            open(path, "w").close()
        process = context.Process(target=_child, args=(argv[2], argv[3:], dict(env or os.environ),
                                                             str(cwd or os.getcwd()), out, err))
        process.start()
        process.join(timeout)
        if process.exitcode is None:
            process.kill()
            process.join()
            raise subprocess.TimeoutExpired(argv, timeout, _read(out), _read(err))
        result = subprocess.CompletedProcess(argv, process.exitcode, _read(out), _read(err))
    if check:
        result.check_returncode()
    return result


def _start_up(env) -> dict:
    """The variables read when the interpreter or torch starts, but PYTHONPATH (the child puts it on sys.path)."""
    return {k: v for k, v in env.items() if k.startswith(START_UP) and k != "PYTHONPATH"}


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as handle:
        return handle.read()


def _child(module: str, args: list[str], env: dict, cwd: str, out: str, err: str) -> None:
    """In the forked process: become ``python -m module args`` in ``cwd`` with ``env``, then exit as the
    interpreter would (threads joined, atexit handlers run, streams flushed)."""
    import atexit
    import runpy
    import threading
    import traceback

    # a forkserver child believes itself a worker of the test's process; the command is a main process of its
    # own, whose pools fork by default (cleanlab's workers read globals they inherit)
    from multiprocessing import process

    this = process.current_process()  # made what multiprocessing's _MainProcess makes of a fresh interpreter
    this._identity, this._name, this._parent_pid, this._parent_name = (), "MainProcess", None, None
    this._config = {"authkey": process.AuthenticationString(os.urandom(32)), "semprefix": "/mp"}
    process._parent_process = None
    process._children = set()
    multiprocessing.set_start_method(None, force=True)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, out, os.O_WRONLY),
                            (2, err, os.O_WRONLY)):
        opened = os.open(path, flags)
        os.dup2(opened, fd)
        os.close(opened)
    for entry in reversed([e for e in env.get("PYTHONPATH", "").split(os.pathsep) if e]):  # read at start-up
        if entry not in sys.path:
            sys.path.insert(1, entry)
    code = 0
    try:
        sys.path[0] = cwd  # as -m puts the working folder first
        sys.argv = [module, *args]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        if exit_.code is None:
            code = 0
        elif isinstance(exit_.code, int):
            code = exit_.code
        else:
            print(exit_.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 - an uncaught error ends the process as the interpreter ends it
        traceback.print_exc()
        code = 1
    try:
        threading._shutdown()
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
