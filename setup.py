"""Which packages the wheel holds: codex_jax and its subpackages, and the top-level ``configs/`` folder
installed as ``codex_jax.configs`` (``codex_jax/config/packaged.py`` finds it there). Everything else is in
pyproject.toml; this file exists because pyproject's package discovery cannot add a package from another
folder."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["codex_jax", "codex_jax.*"]), "codex_jax.configs"],
    package_dir={"codex_jax.configs": "configs"},
    package_data={"codex_jax.configs": ["data/*.jsonl"]},
)
