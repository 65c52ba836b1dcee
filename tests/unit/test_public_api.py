"""The public API is what ``h2guard.__all__`` names, kept sorted (docs/architecture.md, layout)."""

import h2guard
import h2guard.chaos


def test_all_is_sorted_and_importable() -> None:
    for module in (h2guard, h2guard.chaos):
        assert list(module.__all__) == sorted(module.__all__)
        for name in module.__all__:
            assert hasattr(module, name), name


def test_version_matches_the_package_metadata() -> None:
    from importlib.metadata import version

    assert h2guard.__version__ == version("h2guard")
