#!/usr/bin/env bash
# Chapter 15: configure and build the LibTorch programs run_jit, run_aoti and run_cpp_api.
#
#   bash ch15_deploy/cpp/build.sh          # from anywhere; writes build/cpp at the repository root
#
# Builds against the libtorch inside the installed torch wheel (no separate LibTorch download):
# its TorchConfig.cmake lives under torch.utils.cmake_prefix_path. $PYTHON picks the interpreter
# (default: python, i.e. the active virtualenv), $BUILD_DIR the build folder, $JOBS make's -j.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${PYTHON:-python3}"
build_dir="${BUILD_DIR:-$root/build/cpp}"
prefix="$("$python" -c 'import torch; print(torch.utils.cmake_prefix_path)')"

cmake -S "$here" -B "$build_dir" -G "Unix Makefiles" -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_PREFIX_PATH="$prefix"
cmake --build "$build_dir" -j"${JOBS:-2}"
echo "built $build_dir/run_jit, $build_dir/run_aoti and $build_dir/run_cpp_api"
