"""The built wheel holds the `cptlab` package only: the benchmarks (benchmarks/), tests and experiments stay
in the repository. The wheel is built from a copy of the sources with setuptools' PEP 517 backend, as
`pip wheel .` builds it, without network (the backend is the installed setuptools)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_holds_cptlab_and_no_benchmarks(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("cptlab", "conf", "benchmarks", "tests"):  # what a sloppy package finder would pick up
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    build = ("import sys; from setuptools import build_meta; "
             "print(build_meta.build_wheel(sys.argv[1]))")
    proc = subprocess.run([sys.executable, "-c", build, str(tmp_path / "dist")], cwd=src, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    wheel = tmp_path / "dist" / proc.stdout.strip().splitlines()[-1]
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert {"cptlab"} == {t for t in top if not t.endswith((".dist-info", ".data"))}, sorted(top)
    assert "cptlab/cli/train_app.py" in names and "cptlab/utils/console.py" in names
    assert not [n for n in names if "bench" in n.split("/")[0] or n.startswith("cptlab/bench")]
    # The configs ship as the package cptlab.conf: every YAML of conf/, at the same relative path.
    yamls = sorted(str(p.relative_to(ROOT / "conf")) for p in (ROOT / "conf").rglob("*.yaml"))
    assert yamls and sorted(n for n in names if n.startswith("cptlab/conf/") and n.endswith(".yaml")) == [
        f"cptlab/conf/{y}" for y in yamls]
    # ... and every file of every cptlab package (data files such as task YAMLs included) is in the wheel.
    shipped = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "cptlab").rglob("*")
                     if p.is_file() and "__pycache__" not in p.parts)
    assert [f for f in shipped if f not in names] == []
