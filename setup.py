"""Package layout only (everything else is in pyproject.toml).

``configs/`` stays at the top of the repository, where Hydra users look for it, and travels
inside a wheel as the package data ``bnrnn/configs``, so ``python -m bnrnn.train`` works after
``pip install .`` as it does in a clone (``bnrnn.config.CONFIG_DIR`` finds either).
"""
from setuptools import find_namespace_packages, find_packages, setup

setup(
    packages=find_packages(include=["bnrnn", "bnrnn.*"]) + ["bnrnn.configs"]
    + [f"bnrnn.configs.{group}" for group in find_namespace_packages("configs")],
    package_dir={"bnrnn.configs": "configs"},
    package_data={"": ["*.md"], "bnrnn.configs": ["**/*.yaml"], "bnrnn.configs.*": ["*.yaml"]},
)
