#!/usr/bin/env bash
# Chapter 15: configure and build the LibTorch programs run_jit, run_aoti and run_cpp_api.
#
#   bash ch15_deploy/cpp/build.sh          # from anywhere; writes build/cpp at the repository root
#
# Builds against the libtorch inside the installed torch wheel (no separate LibTorch download):
# its TorchConfig.cmake lives under torch.utils.cmake_prefix_path. $PYTHON picks the interpreter
# (default: the repository's .venv/bin/python if there is one, else python3 on the PATH, i.e.
# an active virtualenv), $BUILD_DIR the build folder, $JOBS make's -j.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
if [[ -n "${PYTHON:-}" ]]; then
    python="$PYTHON"
elif [[ -x "$root/.venv/bin/python" ]]; then
    python="$root/.venv/bin/python"
else
    python="python3"
fi
build_dir="${BUILD_DIR:-$root/build/cpp}"
for tool in cmake make; do
    if ! command -v "$tool" > /dev/null; then
        echo "error: $tool not found; install it (e.g. apt-get install cmake build-essential)" >&2
        exit 2
    fi
done
if ! prefix="$("$python" -c 'import torch; print(torch.utils.cmake_prefix_path)' 2> /dev/null)"; then
    echo "error: $python cannot import torch; activate the project's virtualenv or run" \
         "PYTHON=/path/to/venv/bin/python bash $0" >&2
    exit 2
fi

cmake -S "$here" -B "$build_dir" -G "Unix Makefiles" -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_PREFIX_PATH="$prefix"
cmake --build "$build_dir" -j"${JOBS:-2}"
echo "built $build_dir/run_jit, $build_dir/run_aoti and $build_dir/run_cpp_api"
