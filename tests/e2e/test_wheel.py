"""A plain `pip install .` (what the Dockerfile runs) carries everything the project needs: a
wheel built from the sources, installed into a fresh virtual environment without the
project's editable install, runs the console script and the worker entry, and finds every
data file (SQL, Lua, migrations, scenarios, drills, the shipped model).

The fresh environment takes the project's dependencies from the development environment's
site-packages (added as a plain path, so that environment's editable-install hook is not
run): the test is about what the wheel holds, not about downloading its dependencies."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def sources(into: Path) -> Path:
    """The files git would ship (tracked, or new and not ignored), copied to `into`."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
        capture_output=True, text=True, check=True).stdout.split()
    for rel in listed:
        src = ROOT / rel
        if src.is_file():
            dst = into / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    return into


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(python of a fresh venv with the wheel installed, the wheel)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = sources(tmp / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp / "dist"), str(src)],
                   check=True, cwd=tmp)
    (wheel,) = (tmp / "dist").glob("jobharness-*.whl")
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; "
                                "print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    with zipfile.ZipFile(wheel) as zf:  # a wheel is installed by unpacking it
        zf.extractall(site)
    deps = sysconfig.get_paths()["purelib"]  # this environment's packages, .pth not run
    (site / "dependencies.pth").write_text(deps + "\n")
    scripts = env_dir / "bin"
    (scripts / "jobharness").write_text(
        f"#!{python}\nimport sys\nfrom loadtests.cli import main\nsys.exit(main())\n")
    (scripts / "jobharness").chmod(0o755)
    return python, wheel


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_wheel_holds_every_data_file(installed: tuple[Path, Path]) -> None:
    _, wheel = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in ("core/store/sql/queries.sql", "core/dispatch/lua/acquire.lua",
                     "core/py.typed", "migrations/001_create_jobs_table.up.sql",
                     "loadtests/scenarios/smoke.yaml", "loadtests/locustfile.py",
                     "chaos/drills/gameday.yaml", "chaos/drills/postgres-restart.yaml",
                     "predictor/learnt-model.skops", "predictor/learnt-model.card.json",
                     "predictor/hand-rule.card.json", "predictor/hand-rule.md"):
        assert expected in names, expected
    assert not any(n.startswith("tests/") for n in names)


def test_the_installed_wheel_runs_without_the_source_tree(installed: tuple[Path, Path],
                                                          tmp_path: Path) -> None:
    python, _ = installed
    where = run([str(python), "-c", "import core, chaos; print(core.__file__, chaos.__file__)"],
                tmp_path)
    assert where.returncode == 0, where.stderr
    assert str(ROOT) not in where.stdout  # the wheel's copy, not the checkout
    script = run([str(python.parent / "jobharness"), "--help"], tmp_path)
    assert script.returncode == 0, script.stderr
    assert "run" in script.stdout
    assert "supervisor" in script.stdout
    worker = run([str(python), "-m", "core.cli", "worker", "--help"], tmp_path)
    assert worker.returncode == 0, worker.stderr
    assert "--concurrency" in worker.stdout
    data = run([str(python), "-c",
                "from chaos.drill import available; from loadtests.scenario import available"
                " as scenarios; from core.store.queries import queries;"
                " from core.store.migrate import load_migrations;"
                " print(len(available()), len(scenarios()), len(queries()),"
                " len(load_migrations()))"], tmp_path)
    assert data.returncode == 0, data.stderr
    drills, scenarios, queries, migrations = map(int, data.stdout.split())
    assert min(drills, scenarios, migrations) >= 10
    assert queries >= 40
