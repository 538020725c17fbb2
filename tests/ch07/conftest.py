"""A tiny synthetic CIFAR-10 (10 train / 4 test images per class) under a temporary data root."""
import pytest

from ch07_cifar.synthetic import SYNTHETIC_DIR, write_synthetic_cifar

TRAIN_PER_CLASS, TEST_PER_CLASS = 10, 4


@pytest.fixture(autouse=True)
def tiny_ops_on_one_thread(one_torch_thread):
    """These tests run many tiny ops (tests/conftest.py's one_torch_thread)."""
    yield


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """A data root holding only synthetic/cifar-10-batches-py: scripts take it as --data-dir."""
    root = tmp_path_factory.mktemp("cifar_root")
    write_synthetic_cifar(root / SYNTHETIC_DIR, TRAIN_PER_CLASS, TEST_PER_CLASS, seed=0)
    return root


@pytest.fixture(scope="session")
def tiny_dir(tiny_root):
    return tiny_root / SYNTHETIC_DIR
