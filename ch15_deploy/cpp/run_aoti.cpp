// Chapter 15: run an AOTInductor package (.pt2) from C++, the successor of torch::jit::load.
//
//   build/cpp/run_aoti MODEL.pt2 INPUTS.bin OUTPUTS.bin
//
// MODEL.pt2 is what torch._inductor.aoti_compile_and_package wrote (export_aoti.py): the model
// compiled ahead of time into a shared library plus its weights. AOTIModelPackageLoader unpacks
// it and runs it; there is no interpreter and no Python. Inputs and outputs are lists of tensors
// in the format of tensor_file.h.
#include <iostream>

#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <c10/core/InferenceMode.h>

#include "tensor_file.h"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: " << argv[0] << " MODEL.pt2 INPUTS.bin OUTPUTS.bin\n";
    return 2;
  }
  try {
    torch::inductor::AOTIModelPackageLoader loader(argv[1]);
    std::vector<at::Tensor> inputs = read_tensors(argv[2]);

    c10::InferenceMode guard;                      // inference only: no autograd graph
    std::vector<at::Tensor> outputs = loader.run(inputs);   // the forward's flat outputs

    write_tensors(argv[3], outputs);
    for (auto& t : outputs) std::cout << "output " << t.sizes() << "\n";
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
