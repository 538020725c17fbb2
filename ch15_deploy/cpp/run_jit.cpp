// Chapter 15 (book 15.10): run a TorchScript file from C++ with torch::jit::load.
//
//   build/cpp/run_jit MODEL.pt INPUTS.bin OUTPUTS.bin
//
// MODEL.pt is what torch.jit.save wrote (export_jit.py: the traced CycleGAN generator or U-Net,
// jit_intro.py: LunaModel). INPUTS.bin holds the forward's arguments, OUTPUTS.bin receives its
// result: one tensor, or each tensor of a returned tuple, in the format of tensor_file.h. The
// book's program read a JPEG with CImg and wrote one back; a tensor file keeps this one free of
// image libraries, and Python does the image side.
#include <iostream>

#include <c10/core/InferenceMode.h>
#include <torch/script.h>

#include "tensor_file.h"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: " << argv[0] << " MODEL.pt INPUTS.bin OUTPUTS.bin\n";
    return 2;
  }
  try {
    torch::jit::script::Module module = torch::jit::load(argv[1], torch::kCPU);
    module.eval();
    std::vector<torch::jit::IValue> inputs;
    for (auto& t : read_tensors(argv[2])) inputs.emplace_back(t);

    c10::InferenceMode guard;                      // inference only: no autograd graph
    torch::jit::IValue result = module.forward(inputs);

    std::vector<at::Tensor> outputs;
    if (result.isTuple()) {
      for (auto& v : result.toTupleRef().elements()) outputs.push_back(v.toTensor());
    } else {
      outputs.push_back(result.toTensor());
    }
    write_tensors(argv[3], outputs);
    for (auto& t : outputs) std::cout << "output " << t.sizes() << "\n";
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
