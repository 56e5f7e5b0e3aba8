import functools
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from data import datasets  # noqa: E402
from tests.c_builds import c_builds  # noqa: E402
from tests.c_engine import C_DIR, read_logits  # noqa: E402
from tests.checks import c_binaries  # noqa: E402
from tests.kernel_models import export  # noqa: E402


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


# --- the C engine: fixtures every C test module shares (a module may define its own `binaries`) ----

@pytest.fixture(scope="module")
def binaries():
    """{"fast": c/inference, "asan": c/inference_asan}, made first (skip without make or gcc)."""
    return c_binaries()


@pytest.fixture(scope="module")
def builds():
    """Every build of the C engine by kind (tests/c_builds.py's TARGETS), each made when a test first
    asks for it: a run of some of the tests (make test-fast) builds only the binaries they use."""
    return c_builds()


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """tests/kernel_models.py's export(), once per graph for the module's tests."""
    @functools.lru_cache(maxsize=None)
    def get(arch, mode, bits, tweak=None):
        return export(str(tmp_path_factory.mktemp("ex")), arch, mode, 7, bits, tweak)
    return get


@pytest.fixture(scope="module")
def lenet_reference(builds, tmp_path_factory):
    """LeNet's shipped export on 2,000 MNIST test images: the reference kernels' logits."""
    import config       # here: pytest's hooks above take an argument of that name
    datasets.prepare_mnist(os.path.join(ROOT, "data"), config.MIRROR_DIR)
    out = str(tmp_path_factory.mktemp("lenet") / "reference.txt")
    proc = subprocess.run([builds["native"], "--reference", "--limit", "2000", "--logits", out],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return read_logits(out)


@pytest.fixture(scope="module")
def aarch64(builds):
    """builds plus the aarch64 cross builds, without and with OpenMP (c/mcu/install-toolchain.sh
    installs the cross compiler and qemu-user)."""
    for tool in ("aarch64-linux-gnu-gcc", "qemu-aarch64"):
        if shutil.which(tool) is None:
            pytest.skip(f"no {tool} (c/mcu/install-toolchain.sh installs it)")
    proc = subprocess.run(["make", "-C", C_DIR, "aarch64", "aarch64-omp"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    builds.update(aarch64=os.path.join(C_DIR, "inference_aarch64"),
                  aarch64_omp=os.path.join(C_DIR, "inference_aarch64_omp"))
    return builds
