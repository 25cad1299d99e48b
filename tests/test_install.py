"""`pip install .` (not editable): the wheel carries conf/ as claire/conf, and the commands run from the installed
copy in a fresh virtualenv, started in an empty folder; an editable install keeps reading the checkout's conf/.

The fresh virtualenv gets the heavy dependencies (torch, transformers, lm-eval, ...) from this environment's
site-packages through a .pth file; the .pth files in that folder (this checkout's editable finder among them) are
not run, so claire itself can come only from the wheel. The wheel is built from a copy of the working tree (tracked
and untracked-but-not-ignored files), so the checkout gets no build/ or *.egg-info.
"""

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
ENV |= {"OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "PYTHONNOUSERSITE": "1"}
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]

if importlib.util.find_spec("venv") is None or importlib.util.find_spec("pip") is None:
    pytest.skip("needs the venv module and pip in this Python to build and install a wheel", allow_module_level=True)
if shutil.which("git") is None or not (ROOT / ".git").exists():
    pytest.skip("needs a git checkout: the wheel is built from the files git lists", allow_module_level=True)


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """A command in a fresh process; fails the test with its output when it fails."""
    done = subprocess.run(command, cwd=cwd, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(map(str, command))}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def working_tree(target: Path) -> Path:
    """A copy of the checkout's files (tracked and untracked-but-not-ignored), uncommitted changes included."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True)
    for name in listed.stdout.decode().split("\0"):
        if name and (ROOT / name).is_file():  # (a tracked file deleted in the working tree is listed too)
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
    return target


def fresh_venv(folder: Path) -> Path:
    """A virtualenv without pip that sees this environment's packages after its own; its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    found = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env=ENV,
                           capture_output=True, text=True, check=True)  # fmt: skip
    (Path(found.stdout.strip()) / "claire-test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    source = working_tree(root / "source")
    run([*PIP, "wheel", "--no-deps", "--no-build-isolation", "--no-index", str(source), "-w", str(root / "dist")], root)
    (found,) = (root / "dist").glob("claire-*.whl")
    return found


@pytest.fixture(scope="module")
def python(wheel, tmp_path_factory) -> Path:
    """The fresh virtualenv's python, with the wheel installed."""
    python = fresh_venv(tmp_path_factory.mktemp("venv") / "venv")
    run([*PIP, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)], wheel.parent)
    return python


@pytest.fixture
def empty(tmp_path) -> Path:
    """The folder the commands start in; nothing there to import claire from."""
    folder = tmp_path / "empty"
    folder.mkdir()
    return folder


def test_the_wheel_carries_the_configs_and_the_package_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"claire/conf/{p.relative_to(ROOT / 'conf').as_posix()}" for p in (ROOT / "conf").rglob("*.yaml")}
    assert {"claire/conf/train.yaml", "claire/conf/hydra/default.yaml"} <= configs <= names
    assert not any(name.startswith("conf/") for name in names)  # never a top-level `conf` package in site-packages
    tasks = [p.relative_to(ROOT).as_posix() for p in (ROOT / "claire/evaluation/tasks").rglob("*") if p.is_file()]
    shipped = [t for t in tasks if t.endswith((".yaml", ".py"))]
    assert "claire/evaluation/tasks/causal/causal.yaml" in shipped and set(shipped) <= names
    assert "claire/data/causal_sample.jsonl" in names
    assert "claire/training/architectures/qwen2.5-7b.json" in names
    assert "hydra_plugins/claire_sweeper/claire_sweeper.py" in names
    assert not (ROOT / "claire" / "conf").exists()  # a checkout reads conf/; a claire/conf here would shadow it


def test_claire_is_imported_from_the_wheel_not_the_checkout(python, empty):
    code = "import sys, claire, claire.configs as c; print(claire.__file__); print(c.CONFIG_DIR); print(sys.meta_path)"
    file, config_dir, finders = run([python, "-c", code], empty).stdout.splitlines()
    venv = python.parents[1]
    assert Path(file).is_relative_to(venv) and not Path(file).is_relative_to(ROOT)
    assert Path(config_dir) == Path(file).parent / "conf" and (Path(config_dir) / "train.yaml").is_file()
    assert "editable" not in finders.lower()  # this checkout's editable finder did not leak in


def test_train_composes_and_plans_from_the_packaged_configs(python, empty, tmp_path):
    job = run([python, "-m", "claire.train", "--cfg", "job"], empty).stdout
    assert "name: smollm2-135m" in job and "lora:" in job and "trainer:" in job
    planned = run([python, "-m", "claire.train", "model=7b", "lora=r32", "dry_run=true"], empty).stdout
    assert "80,740,352 trainable" in planned
    # claire.reproduce's route: a run folder's frozen config as the primary config (--config-path RUN), a new folder
    frozen = tmp_path / "run"
    frozen.mkdir()
    job_7b = run([python, "-m", "claire.train", "model=7b", "lora=r32", "--cfg", "job"], empty).stdout
    (frozen / "config.yaml").write_text(job_7b)
    again = ["--config-path", str(frozen), "--config-name", "config", f"hydra.run.dir={tmp_path / 'rerun'}"]
    assert "80,740,352 trainable" in run([python, "-m", "claire.train", *again, "dry_run=true"], empty).stdout
    assert list(empty.iterdir()) == []  # a dry run leaves no run folder


def test_evaluate_help_comes_from_the_packaged_configs(python, empty):
    assert "claire.evaluate" in run([python, "-m", "claire.evaluate", "--help"], empty).stdout


def test_the_claire_causal_task_builds_from_the_installed_package(python, empty):
    code = (
        "from lm_eval.tasks import TaskManager\n"
        "from claire.evaluation import tasks\n"
        "task = TaskManager(include_path=str(tasks.PATH)).load(['claire_causal'])['tasks']['claire_causal']\n"
        "print(tasks.PATH)\n"
        "print(len(task.test_docs()))\n"
    )
    path, docs = run([python, "-c", code], empty).stdout.strip().splitlines()[-2:]
    assert Path(path).is_relative_to(python.parents[1]) and int(docs) > 0


def test_an_editable_install_keeps_reading_the_checkouts_conf(tmp_path):
    source = working_tree(tmp_path / "source")
    python = fresh_venv(tmp_path / "venv")
    install = ["install", "--no-deps", "--no-build-isolation", "--no-index", "-e", str(source)]
    run([*PIP, "--python", str(python), *install], tmp_path)
    (tmp_path / "empty").mkdir()
    code = "import claire, claire.configs as c; print(claire.__file__); print(c.CONFIG_DIR)"
    file, config_dir = run([python, "-c", code], tmp_path / "empty").stdout.splitlines()
    assert Path(file) == source / "claire" / "__init__.py" and Path(config_dir) == source / "conf"
    assert not (source / "claire" / "conf").exists()  # nothing copied into the package folder
