import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def pytest_configure(config):
    config.addinivalue_line("markers", "models: slow whole-network acceptance cases (torchvision); "
                                       "run by `make test-models` (pytest -m models), left out otherwise")


def pytest_collection_modifyitems(config, items):
    """`make test` (no -m models) leaves the slow whole-network cases out."""
    if "models" in (config.getoption("markexpr") or ""):
        return
    kept = [item for item in items if item.get_closest_marker("models") is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item.get_closest_marker("models")])
        items[:] = kept
