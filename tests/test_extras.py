"""maskdet as users install it: the built wheel in a fresh virtual environment, with no extra or with exactly
one, used from an empty folder through its console commands (``make test-extras``; not part of ``make test``).

Installing PyTorch into every environment would take minutes each, so the environments are layered: one
*base* environment holds maskdet's own dependencies (resolved by pip from the wheel, then maskdet itself
removed), and each test environment is a new venv whose only link to it is a ``.pth`` line naming the base's
site-packages. Into it pip installs ``maskdet[<extra>]`` from the wheel: maskdet, its console commands and
what that extra needs land in the new venv, and nothing of the dev environment (no other extra, no pytest,
no repository on the path) is importable there, which each test checks. Packages come from the same local
wheels pip uses everywhere on this machine; nothing is downloaded at run time.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from filelock import FileLock

from tests.conftest import REPO
from tests.test_install import USER_EXPERIMENT

pytestmark = [pytest.mark.extras, pytest.mark.slow]

EXTRAS_MODULES = {"track": "mlflow", "export": "onnxruntime", "detect": "cv2", "sweep": "optuna", "timm": "timm"}
TINY = ["data.source.per_class=20", "data.source.size=48", "trainer.max_epochs=1", "callbacks.explanations=null"]


def _pip(python: Path, *args: str, timeout: int = 600) -> None:
    result = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]


@pytest.fixture(scope="session")
def shared(tmp_path_factory) -> Path:
    """A folder every xdist worker sees (the session's base temporary folder), for the wheel and the base."""
    return tmp_path_factory.getbasetemp().parent if os.environ.get("PYTEST_XDIST_WORKER") else \
        tmp_path_factory.getbasetemp()


@pytest.fixture(scope="session")
def wheel(shared) -> Path:
    with FileLock(shared / "wheel.lock"):
        out = shared / "wheel"
        if not out.is_dir():
            partial = shared / "wheel.partial"
            subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(partial), str(REPO)], check=True, capture_output=True, timeout=300)
            partial.rename(out)
        (path,) = out.glob("maskdet-*.whl")
        return path


@pytest.fixture(scope="session")
def base(shared, wheel) -> Path:
    """The site-packages of a venv holding exactly maskdet's runtime dependencies (built once per session)."""
    with FileLock(shared / "base.lock"):
        venv = shared / "base"
        site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
        if not (venv / ".done").is_file():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
            _pip(venv / "bin" / "python", str(wheel), timeout=1200)
            subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "uninstall", "-q", "-y", "maskdet"],
                           check=True, capture_output=True, timeout=300)
            (venv / ".done").touch()
        return site


def fresh_env(base: Path, wheel: Path, where: Path, extra: str | None) -> tuple[Path, dict]:
    """A new venv at ``where`` with maskdet (and ``extra``) installed from the wheel; its bin folder and the
    environment a user's shell would give its commands (no PYTHONPATH, HF hub offline)."""
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, timeout=300)
    site = where / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    (site / "maskdet_base.pth").write_text(f"{base}\n")
    _pip(where / "bin" / "python", f"{wheel}[{extra}]" if extra else str(wheel))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MASKDET_", "VIRTUAL_ENV", "PYTEST"))}
    env.update(PATH=f"{where / 'bin'}{os.pathsep}{env.get('PATH', '')}", HF_HUB_OFFLINE="1",
               MASKDET_CACHE_DIR=str(where.parent / "cache"), MPLBACKEND="Agg")
    bin_ = where / "bin"
    # only this extra: maskdet comes from this venv, and no other extra's module can be imported
    probe = ("import importlib.util, json, maskdet; print(json.dumps({'maskdet': maskdet.__file__, 'found': "
             f"[m for m in {sorted(EXTRAS_MODULES.values())!r} if importlib.util.find_spec(m)], "
             "'pytest': bool(importlib.util.find_spec('pytest'))}))")
    seen = json.loads(subprocess.run([str(bin_ / "python"), "-c", probe], cwd=where.parent, env=env,
                                     capture_output=True, text=True, check=True).stdout)
    assert seen["maskdet"].startswith(str(site)), seen
    assert seen["found"] == ([EXTRAS_MODULES[extra]] if extra else []) and not seen["pytest"], seen
    return bin_, env


def run(bin_: Path, env: dict, cwd: Path, command: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([str(bin_ / command), *args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{command} {' '.join(args)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def only_run(outputs: Path, task: str) -> Path:
    (folder,) = (outputs / task / "runs").iterdir()
    return folder


@pytest.fixture(scope="session")
def base_install(shared, base, wheel):
    with FileLock(shared / "plain.lock"):
        return fresh_env(base, wheel, shared / "plain" / "venv", None)


def test_the_plain_wheel_trains_a_user_experiment_from_its_own_config_folder(base_install, tiny_dataset, tmp_path):
    bin_, env = base_install
    work = tmp_path / "work"
    (work / "my_conf" / "experiment").mkdir(parents=True)
    (work / "my_conf" / "experiment" / "my_exp.yaml").write_text(USER_EXPERIMENT)
    run(bin_, env, work, "maskdet-train", "--config-dir", "my_conf", "+experiment=my_exp", "data=folder",
        f"data.root={tiny_dataset}")
    folder = only_run(work / "outputs", "my_study")  # outputs go under the working directory
    assert (folder / "metrics.json").is_file() and (folder / "predictions.csv").is_file()
    assert "batch_size: 16" in (folder / ".hydra" / "config.yaml").read_text()
    # an extra that is not installed is named, with the command that installs it
    result = subprocess.run([str(bin_ / "maskdet-train"), "logger=mlflow", *TINY], cwd=work, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "maskdet[track]" in result.stderr, result.stderr[-2000:]


@pytest.fixture(scope="session")
def plain_checkpoint(base_install, shared) -> Path:
    """best.ckpt of a one-epoch run made with the plain install (for export and detect)."""
    bin_, env = base_install
    with FileLock(shared / "plain_run.lock"):
        work = shared / "plain" / "work"
        if not (work / "outputs").is_dir():
            work.mkdir(parents=True, exist_ok=True)
            run(bin_, env, work, "maskdet-train", *TINY, "task_name=plain")
        return only_run(work / "outputs", "plain") / "checkpoints" / "best.ckpt"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loopback(port: int, path: str, body: dict | None = None) -> bytes:
    """One HTTP request to 127.0.0.1 only (http.client: no proxy settings apply, nothing leaves the machine)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST" if body is not None else "GET", path,
                           body=json.dumps(body) if body is not None else None,
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 200, (path, response.status)
        return response.read()
    finally:
        connection.close()


def test_track_logs_to_mlflow_and_mlflow_ui_serves_the_run(base, wheel, tmp_path):
    bin_, env = fresh_env(base, wheel, tmp_path / "venv", "track")
    work = tmp_path / "work"
    work.mkdir()
    run(bin_, env, work, "maskdet-train", "logger=mlflow", *TINY, "task_name=tracked")
    metrics = json.loads((only_run(work / "outputs", "tracked") / "metrics.json").read_text())
    port = _free_port()
    # the README's command, on loopback
    server = subprocess.Popen([str(bin_ / "mlflow"), "ui", "--backend-store-uri", "sqlite:///outputs/mlflow.db",
                               "--host", "127.0.0.1", "--port", str(port)], cwd=work, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(120):
            try:
                _loopback(port, "/health")
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()[-3000:]
                time.sleep(1)
        experiment = json.loads(_loopback(port, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=tracked"))
        (found,) = json.loads(_loopback(port, "/api/2.0/mlflow/runs/search",
                                        {"experiment_ids": [experiment["experiment"]["experiment_id"]]}))["runs"]
        assert found["info"]["status"] == "FINISHED"
        logged = {m["key"]: m["value"] for m in found["data"]["metrics"]}
        assert logged["test/acc"] == pytest.approx(metrics["test"]["test/acc"], abs=1e-6)
        params = {p["key"]: p["value"] for p in found["data"]["params"]}
        assert params["model.architecture"] == "custom_cnn" and params["trainer.max_epochs"] == "1", params
        assert b"<html" in _loopback(port, "/")[:2000].lower()  # the UI itself
    finally:
        server.terminate()
        server.wait(timeout=60)


def test_export_writes_an_onnx_model_that_agrees_with_pytorch(base, wheel, plain_checkpoint, tmp_path):
    bin_, env = fresh_env(base, wheel, tmp_path / "venv", "export")
    work = tmp_path / "work"
    work.mkdir()
    result = run(bin_, env, work, "maskdet-export", f"ckpt_path={plain_checkpoint}")
    (onnx_file,) = (work / "outputs").rglob("model.onnx")
    assert onnx_file.stat().st_size > 10_000
    said = result.stdout + result.stderr
    assert f"exported {onnx_file}" in said and "parity on " in said, said[-2000:]
    check = ("import sys, numpy, onnxruntime; s = onnxruntime.InferenceSession(sys.argv[1]); i = s.get_inputs()[0]; "
             "x = numpy.random.default_rng(0).random([d if isinstance(d, int) else 2 for d in i.shape], numpy.float32); "
             "p = s.run(None, {i.name: x})[0]; print(p.shape, abs(p.sum(1) - 1).max() < 1e-5)")
    ran = subprocess.run([str(bin_ / "python"), "-c", check, str(onnx_file)], cwd=work, env=env, capture_output=True,
                         text=True, timeout=120)
    assert ran.stdout.strip().endswith("True"), ran.stderr[-2000:]  # probabilities from onnxruntime alone


def test_detect_finds_a_face_in_a_photograph(base, wheel, plain_checkpoint, tmp_path):
    # the dev environment ships the photograph; the fresh venv only reads the file
    from skimage import data as skimage_data

    photo = Path(skimage_data.__file__).parent / "astronaut.png"
    bin_, env = fresh_env(base, wheel, tmp_path / "venv", "detect")
    work = tmp_path / "work"
    work.mkdir()
    run(bin_, env, work, "maskdet-predict", f"ckpt_path={plain_checkpoint}", f"input={photo}", "detect=true")
    (frames,) = (work / "outputs").rglob("frames.csv")
    faces = (frames.parent / "predictions.csv").read_text().splitlines()
    assert len(faces) >= 2 and "astronaut.png" in faces[1], faces  # a header and at least the astronaut's face
    assert list((frames.parent / "annotated").iterdir())


def test_sweep_runs_an_optuna_search(base, wheel, tmp_path):
    bin_, env = fresh_env(base, wheel, tmp_path / "venv", "sweep")
    work = tmp_path / "work"
    work.mkdir()
    run(bin_, env, work, "maskdet-train", "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=2", "data.num_folds=2", "~logger", *TINY, "task_name=searched")
    (results,) = (work / "outputs" / "searched").rglob("optimization_results.yaml")
    text = results.read_text()
    assert "best_params" in text and "model.optimizer.lr" in text and "best_value" in text


def test_timm_trains_from_a_local_weights_file(base, wheel, tmp_path):
    bin_, env = fresh_env(base, wheel, tmp_path / "venv", "timm")
    work = tmp_path / "work"
    work.mkdir()
    weights = work / "test_resnet.pth"
    subprocess.run([str(bin_ / "python"), "-c", "import sys, timm, torch; torch.manual_seed(0); "
                    "torch.save(timm.create_model('test_resnet').state_dict(), sys.argv[1])", str(weights)],
                   cwd=work, env=env, check=True, capture_output=True, timeout=300)
    run(bin_, env, work, "maskdet-train", "model=timm", "model.architecture=timm/test_resnet",
        f"model.weights={weights}", "model.freeze=none", "data.image_size=32", *TINY, "task_name=timm_local")
    folder = only_run(work / "outputs", "timm_local")
    assert "test/acc" in json.loads((folder / "metrics.json").read_text())["test"]
