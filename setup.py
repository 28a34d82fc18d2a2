"""The package list: cptlab's packages (data-only folders such as cptlab/evaluation/tasks included) plus its configs, which
live in the top-level conf/ (the one source) and ship in the wheel as the package cptlab.conf (package-dir
mapping below). Everything else is in pyproject.toml."""

from setuptools import find_namespace_packages, setup

setup(
    packages=[*find_namespace_packages(include=["cptlab", "cptlab.*"], exclude=["*__pycache__*"]), "cptlab.conf"],
    package_dir={"cptlab.conf": "conf"},
    package_data={"cptlab.conf": ["*.yaml", "**/*.yaml"], "": ["*.yaml", "*.jsonl", "*.json", "*.txt"]},
)
