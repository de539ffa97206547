"""Packaging glue that pyproject.toml cannot express: ship the top-level ``specs/`` folder
(the source of the built-in spec library) inside the package as ``attncc/specs``.

Everything else about the project lives in pyproject.toml.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["attncc*"]), "attncc.specs"],
    package_dir={"attncc.specs": "specs"},
)
