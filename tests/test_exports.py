"""Every name a package exports resolves: the stage packages export lazily (sio.core.lazy), so a
name left in the table after its definition moved or was deleted fails only when it is first
read (``from sio.train import *`` raised AttributeError for ``compose``). Here each is read."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import sio.core

PACKAGES = (
    "sio",
    "sio.core",
    "sio.shardset",
    "sio.shards",
    "sio.generate",
    "sio.train",
    "sio.evaluate",
    "sio.pipeline",
)
CORE_MODULES = sorted(f"sio.core.{m.name}" for m in pkgutil.iter_modules(sio.core.__path__))


def exported(package: str) -> list[str]:
    return list(getattr(importlib.import_module(package), "__all__", ()))


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_resolves(package):
    module = importlib.import_module(package)
    missing = [name for name in exported(package) if not hasattr(module, name)]
    assert not missing, f"{package} exports {missing}, which do not resolve"
    assert set(exported(package)) <= set(dir(module))


@pytest.mark.parametrize("package", PACKAGES)
def test_star_import_works(package):
    namespace: dict = {}
    exec(f"from {package} import *", namespace)  # noqa: S102 - the statement users write
    assert set(exported(package)) <= set(namespace)


def test_the_stage_packages_export_something():
    for package in ("sio.shardset", "sio.shards", "sio.generate", "sio.train", "sio.evaluate"):
        assert exported(package), package


@pytest.mark.parametrize("module", CORE_MODULES)
def test_every_core_module_imports_and_its_exports_resolve(module):
    loaded = importlib.import_module(module)
    missing = [name for name in getattr(loaded, "__all__", ()) if not hasattr(loaded, name)]
    assert not missing, f"{module} exports {missing}, which do not resolve"


def test_an_unknown_name_is_an_attribute_error_naming_it():
    import sio.train

    with pytest.raises(AttributeError, match="'sio.train' has no attribute 'no_such_part'"):
        sio.train.no_such_part  # noqa: B018 - the lazy exports name what they lack
