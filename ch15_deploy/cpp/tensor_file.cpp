// Chapter 15: read and write the tensor files described in tensor_file.h.
#include "tensor_file.h"

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <stdexcept>
#include <unistd.h>

std::vector<at::Tensor> read_tensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  std::vector<at::Tensor> tensors;
  int64_t ndim = 0;
  while (in.read(reinterpret_cast<char*>(&ndim), sizeof ndim)) {
    if (ndim < 0 || ndim > 8) throw std::runtime_error(path + ": bad ndim");
    std::vector<int64_t> sizes(ndim);
    in.read(reinterpret_cast<char*>(sizes.data()), ndim * sizeof(int64_t));
    for (auto s : sizes)
      if (s < 0) throw std::runtime_error(path + ": bad size");
    auto t = at::empty(sizes, at::kFloat);
    in.read(reinterpret_cast<char*>(t.data_ptr<float>()), t.numel() * sizeof(float));
    if (!in) throw std::runtime_error(path + ": truncated");
    tensors.push_back(t);
  }
  if (tensors.empty()) throw std::runtime_error(path + ": no tensors");
  return tensors;
}

// Written to a temporary file beside `path` and renamed onto it once complete, so a full disk
// never leaves half a file under the real name (the temporary is removed on any failure).
void write_tensors(const std::string& path, const std::vector<at::Tensor>& tensors) {
  const std::string tmp = path + ".tmp-" + std::to_string(getpid());
  {
    std::ofstream out(tmp, std::ios::binary);
    if (!out) throw std::runtime_error(path + ": cannot write");
    for (const auto& tensor : tensors) {
      auto t = tensor.detach().to(at::kCPU, at::kFloat).contiguous();
      int64_t ndim = t.dim();
      out.write(reinterpret_cast<const char*>(&ndim), sizeof ndim);
      out.write(reinterpret_cast<const char*>(t.sizes().data()), ndim * sizeof(int64_t));
      out.write(reinterpret_cast<const char*>(t.data_ptr<float>()), t.numel() * sizeof(float));
    }
    out.close();
    if (!out) {
      std::remove(tmp.c_str());
      throw std::runtime_error(path + ": cannot write (disk full?)");
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw std::runtime_error(path + ": cannot write (rename failed)");
  }
}
