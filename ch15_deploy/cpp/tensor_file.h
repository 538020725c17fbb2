// Chapter 15: the tensor file format the C++ programs and export_jit.py / export_aoti.py share.
//
// A file is a sequence of float32 tensors, each written as
//   int64 ndim, int64 sizes[ndim], float32 values[prod(sizes)]   (little-endian, C order)
// and nothing else: no names, no dtype, no padding. Python writes and reads it with numpy
// (ch15_deploy/export_jit.py: write_tensors / read_tensors).
#pragma once

#include <string>
#include <vector>

#include <ATen/ATen.h>   // tensors only: much quicker to compile than <torch/torch.h>

std::vector<at::Tensor> read_tensors(const std::string& path);
void write_tensors(const std::string& path, const std::vector<at::Tensor>& tensors);
