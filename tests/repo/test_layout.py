"""The product is the operator alone: nothing in `graphcred` imports the test bed (or tests), the wheel holds
`graphcred` and nothing else, and the dependency locks pin what the image and the tests install."""

from __future__ import annotations

import ast
import configparser
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from ..locks import LOCKS, ROOT, canonical, hashed, pins

PRODUCT = ROOT / "operator" / "graphcred"
NOT_PRODUCT = ("graphcred_testbed", "tests", "bench")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_no_product_module_imports_the_test_bed() -> None:
    modules = sorted(PRODUCT.rglob("*.py"))
    assert len(modules) > 15
    offending = {str(m.relative_to(ROOT)): sorted(n for n in _imports(m) if n.split(".")[0] in NOT_PRODUCT)
                 for m in modules}
    assert {m: n for m, n in offending.items() if n} == {}
    assert not (PRODUCT / "testbed").exists()


# The layering itself is import-linter's (.importlinter, run by `make lint`): here only that no subpackage escapes it.
def test_every_subpackage_is_in_a_layer_of_the_import_contracts() -> None:
    contracts = configparser.ConfigParser()
    contracts.read(ROOT / ".importlinter")
    layers = {name.strip() for line in contracts["importlinter:contract:layers"]["layers"].split("\n")
              for name in line.split("|") if name.strip()}
    subpackages = {f"graphcred.{p.parent.name}" for p in PRODUCT.glob("*/__init__.py")}
    assert len(subpackages) >= 8
    assert subpackages == layers
    assert {p.name for p in PRODUCT.glob("*.py")} == {"__init__.py", "__main__.py"}, "every module in a subpackage"


def test_the_wheel_holds_graphcred_alone(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(tmp_path), str(ROOT)], check=True, timeout=300, capture_output=True)
    (wheel,) = tmp_path.glob("graphcred-*.whl")
    files = zipfile.ZipFile(wheel).namelist()
    top = {f.split("/")[0] for f in files}
    assert top == {"graphcred", wheel.name.split("-py3")[0] + ".dist-info"}, sorted(top)
    sources = {f.removeprefix("graphcred/") for f in files if f.startswith("graphcred/")}
    assert sources == {str(m.relative_to(PRODUCT)) for m in PRODUCT.rglob("*.py")}, sorted(sources)


def _declared(pyproject: Path, extra: str | None = None) -> set[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = project["optional-dependencies"][extra] if extra else project["dependencies"]
    return {canonical(r.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].strip())
            for r in requirements}


def test_every_declared_dependency_is_locked_with_hashes() -> None:
    dev, runtime, build = pins("dev"), pins("runtime"), pins("build")
    assert _declared(ROOT / "pyproject.toml") <= runtime.keys()
    assert (_declared(ROOT / "pyproject.toml", "dev") | _declared(ROOT / "testbed" / "pyproject.toml")
            | runtime.keys() | build.keys()) <= dev.keys()
    assert "setuptools" in build
    for lock in ("dev", "runtime", "build"):
        assert all(n > 0 for n in hashed(lock).values()), lock
        assert "--find-links" not in (LOCKS / f"{lock}.txt").read_text()


def test_the_image_locks_the_versions_the_tests_ran() -> None:
    dev = pins("dev")
    for lock in ("runtime", "build"):
        differing = {name: (version, dev.get(name)) for name, version in pins(lock).items()
                     if dev.get(name) != version}
        assert differing == {}, f"requirements/{lock}.txt differs from requirements/dev.txt; run `make lock`"


# The client distribution (clients/python) goes into consumers' images: azure-core and the standard library only.
CLIENT = ROOT / "clients" / "python"


def test_the_client_imports_only_azure_core_and_the_standard_library() -> None:
    modules = sorted((CLIENT / "graphcred_client").rglob("*.py"))
    assert len(modules) >= 4
    allowed = set(sys.stdlib_module_names) | {"azure", "graphcred_client"}
    offending = {str(m.relative_to(ROOT)): sorted(n for n in _imports(m) if n.split(".")[0] not in allowed)
                 for m in modules}
    assert {m: n for m, n in offending.items() if n} == {}
    azure = {n for m in modules for n in _imports(m) if n.split(".")[0] == "azure"}
    assert azure and all(n.startswith("azure.core") for n in azure), sorted(azure)
    assert _declared(CLIENT / "pyproject.toml") == {"azure-core"}


def test_the_client_wheel_holds_graphcred_client_alone(tmp_path: Path) -> None:
    # Built from a clean copy: a stale build/ in the tree would put deleted modules into the wheel.
    source = shutil.copytree(CLIENT, tmp_path / "src", ignore=shutil.ignore_patterns("build", "*.egg-info",
                                                                                       "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(tmp_path), str(source)], check=True, timeout=300, capture_output=True)
    (wheel,) = tmp_path.glob("graphcred_client-*.whl")
    files = zipfile.ZipFile(wheel).namelist()
    top = {f.split("/")[0] for f in files}
    assert top == {"graphcred_client", wheel.name.split("-py3")[0] + ".dist-info"}, sorted(top)
    package = CLIENT / "graphcred_client"
    assert {f.removeprefix("graphcred_client/") for f in files if f.startswith("graphcred_client/")} == \
        {str(m.relative_to(package)) for m in package.rglob("*.py")} | {"py.typed"}
