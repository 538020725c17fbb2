"""ch08 trains on the same tiny synthetic CIFAR-10 as the ch07 tests, with one torch thread."""
from tests.ch07.conftest import tiny_dir, tiny_ops_on_one_thread, tiny_root  # noqa: F401  (fixtures)
