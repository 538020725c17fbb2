"""ch08 trains on the same tiny synthetic CIFAR-10 as the ch07 tests, with one torch thread."""
from tests.ch07.conftest import one_torch_thread, tiny_dir, tiny_root  # noqa: F401  (fixtures)
