"""Every folder that is a package is listed in pyproject's explicit `packages`, mapped right."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_folder_is_listed_and_mapped():
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_dir = setup["package-dir"]
    listed = set(setup["packages"])
    folders = {
        p.parent.relative_to(ROOT).as_posix()
        for p in ROOT.glob("**/__init__.py")
        if not any(part.startswith(".") or part in ("tests", "build") for part in p.relative_to(ROOT).parts)
    }
    mapped = {folder: pkg for pkg, folder in package_dir.items()}
    assert folders == set(mapped), "package folders and package-dir disagree"
    assert listed == set(mapped.values())
    assert all(pkg == "dpbench" or pkg.startswith("dpbench.") for pkg in listed), "no top-level methods/tasks packages"


def test_schema_ships_with_the_package():
    from importlib import resources

    assert resources.files("dpbench").joinpath("schema/result.schema.json").is_file()


def test_the_pretrained_embedded_model_ships_with_the_package():
    from importlib import resources

    from dpbench.models.loading import TinyLlava

    folder = resources.files("dpbench.models").joinpath("weights", TinyLlava().key())
    for name in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json"):
        assert folder.joinpath(name).is_file(), name
