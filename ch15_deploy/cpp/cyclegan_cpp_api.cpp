// Chapter 15 (book 15.10, cyclegan_cpp_api.cpp): the CycleGAN generator written with LibTorch's
// C++ frontend, torch::nn modules instead of a TorchScript program.
//
//   build/cpp/run_cpp_api WEIGHTS.pt INPUTS.bin OUTPUTS.bin
//
// WEIGHTS.pt holds the generator's tensors under their state_dict names (model.1.weight,
// model.10.conv_block.1.weight, ..., model.26.bias): export_jit.save_weights_for_cpp writes it
// as a TorchScript file of nested modules that hold nothing but those tensors, and a traced or
// scripted generator (export_jit.py's cyclegan_traced.pt) carries the same names, so it works
// too. The program reads it with torch::jit::load, infers the generator's size from it (ngf from
// model.1.weight, the number of residual blocks from the model.N.conv_block entries), builds the
// C++ generator, checks that every parameter and buffer of it has a tensor of the same name and
// shape in the file and that the file has nothing else, and copies them in. INPUTS.bin holds one
// N x 3 x H x W image batch in [0, 1], OUTPUTS.bin receives the N x 3 x H x W result in [-1, 1]
// (tensor_file.h). The book read a JPEG with CImg, loaded the weights with torch::load and
// showed the result in a window; here Python does the image side.
#include <chrono>
#include <iostream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>

#include <torch/script.h>
#include <torch/torch.h>

#include "tensor_file.h"

namespace nn = torch::nn;

// x + (reflect pad, 3x3 conv, InstanceNorm, ReLU, reflect pad, 3x3 conv, InstanceNorm)(x), as
// ch01_intro/cyclegan.py's ResNetBlock: the convolutions sit at conv_block.1 and conv_block.5.
struct ResNetBlockImpl : nn::Module {
  nn::Sequential conv_block;

  explicit ResNetBlockImpl(int64_t dim)
      : conv_block(nn::ReflectionPad2d(1),
                   nn::Conv2d(nn::Conv2dOptions(dim, dim, 3)),
                   nn::InstanceNorm2d(nn::InstanceNorm2dOptions(dim)),
                   nn::ReLU(nn::ReLUOptions(/*inplace=*/true)),
                   nn::ReflectionPad2d(1),
                   nn::Conv2d(nn::Conv2dOptions(dim, dim, 3)),
                   nn::InstanceNorm2d(nn::InstanceNorm2dOptions(dim))) {
    register_module("conv_block", conv_block);   // unregistered modules are invisible to
  }                                              // named_parameters(), so never loaded

  torch::Tensor forward(const torch::Tensor& x) { return x + conv_block->forward(x); }
};
TORCH_MODULE(ResNetBlock);   // ResNetBlock: a shared-pointer holder of ResNetBlockImpl

// One nn::Sequential called `model`, laid out as the Python ResNetGenerator's, so the names
// match the book's horse2zebra_0.4.0.pth: model.1 (7x7 conv), model.4 and model.7 (stride-2
// convs), model.10 .. model.(9 + n_blocks) (residual blocks), two transposed convs, the last conv.
struct ResNetGeneratorImpl : nn::Module {
  nn::Sequential model;

  ResNetGeneratorImpl(int64_t input_nc, int64_t output_nc, int64_t ngf, int64_t n_blocks) {
    TORCH_CHECK(n_blocks >= 0, "n_blocks must be >= 0");
    model->push_back(nn::ReflectionPad2d(3));
    model->push_back(nn::Conv2d(nn::Conv2dOptions(input_nc, ngf, 7)));
    model->push_back(nn::InstanceNorm2d(nn::InstanceNorm2dOptions(ngf)));
    model->push_back(nn::ReLU(nn::ReLUOptions(true)));
    for (int64_t mult : {1, 2}) {                               // two stride-2 stages: H / 4
      model->push_back(nn::Conv2d(
          nn::Conv2dOptions(ngf * mult, ngf * mult * 2, 3).stride(2).padding(1)));
      model->push_back(nn::InstanceNorm2d(nn::InstanceNorm2dOptions(ngf * mult * 2)));
      model->push_back(nn::ReLU(nn::ReLUOptions(true)));
    }
    for (int64_t i = 0; i < n_blocks; ++i) model->push_back(ResNetBlock(ngf * 4));
    for (int64_t mult : {4, 2}) {                               // and back up: H
      model->push_back(nn::ConvTranspose2d(
          nn::ConvTranspose2dOptions(ngf * mult, ngf * mult / 2, 3)
              .stride(2).padding(1).output_padding(1)));
      model->push_back(nn::InstanceNorm2d(nn::InstanceNorm2dOptions(ngf * mult / 2)));
      model->push_back(nn::ReLU(nn::ReLUOptions(true)));
    }
    model->push_back(nn::ReflectionPad2d(3));
    model->push_back(nn::Conv2d(nn::Conv2dOptions(ngf, output_nc, 7)));
    model->push_back(nn::Tanh());
    register_module("model", model);
  }

  torch::Tensor forward(const torch::Tensor& x) { return model->forward(x); }
};
TORCH_MODULE(ResNetGenerator);

using TensorMap = std::map<std::string, at::Tensor>;

// Every parameter and buffer of the TorchScript file, by its dotted name.
TensorMap stored_tensors(const torch::jit::Module& file) {
  TensorMap stored;
  for (const auto& p : file.named_parameters()) stored[p.name] = p.value;
  for (const auto& b : file.named_buffers()) stored[b.name] = b.value;
  return stored;
}

std::string shape_of(const at::Tensor& t) {
  std::ostringstream s;
  s << t.sizes();
  return s.str();
}

// The generator the file's tensors describe; a one-line error when it does not look like one.
ResNetGenerator generator_for(const TensorMap& stored, const std::string& path) {
  auto first = stored.find("model.1.weight");
  if (first == stored.end() || first->second.dim() != 4) {
    std::string example = stored.empty() ? "none" : "e.g. '" + stored.begin()->first + "'";
    throw std::runtime_error(path + ": not the weights of a CycleGAN ResNetGenerator: no 4-D "
                             "tensor 'model.1.weight' (the file has " +
                             std::to_string(stored.size()) + " tensors, " + example + ")");
  }
  int64_t ngf = first->second.size(0), input_nc = first->second.size(1);
  int64_t n_blocks = 0;
  while (stored.count("model." + std::to_string(10 + n_blocks) + ".conv_block.1.weight"))
    ++n_blocks;
  auto last = stored.find("model." + std::to_string(17 + n_blocks) + ".weight");
  if (last == stored.end() || last->second.dim() != 4)
    throw std::runtime_error(path + ": not the weights of a CycleGAN ResNetGenerator: with " +
                             std::to_string(n_blocks) + " residual blocks the last convolution "
                             "'model." + std::to_string(17 + n_blocks) +
                             ".weight' should follow, and it is not there");
  return ResNetGenerator(input_nc, last->second.size(0), ngf, n_blocks);
}

// Copy the file's tensors into the module by name, after checking that both hold exactly the
// same names with the same shapes (torch::load would silently take a tensor of another shape).
void load_by_name(nn::Module& module, const TensorMap& stored, const std::string& path) {
  TensorMap wanted;
  for (const auto& p : module.named_parameters()) wanted[p.key()] = p.value();
  for (const auto& b : module.named_buffers()) wanted[b.key()] = b.value();
  std::vector<std::string> problems;
  for (const auto& [name, tensor] : wanted) {
    auto found = stored.find(name);
    if (found == stored.end())
      problems.push_back("missing '" + name + "'");
    else if (found->second.sizes() != tensor.sizes())
      problems.push_back("'" + name + "' is " + shape_of(found->second) + ", the generator's " +
                         shape_of(tensor));
  }
  for (const auto& [name, tensor] : stored)
    if (!wanted.count(name)) problems.push_back("unexpected '" + name + "'");
  if (!problems.empty()) {
    std::string message = path + ": the weights do not fit the generator: " + problems[0];
    if (problems.size() > 1)
      message += " (and " + std::to_string(problems.size() - 1) + " more)";
    throw std::runtime_error(message);
  }
  torch::NoGradGuard no_grad;                    // copy_ into leaves that require grad
  for (auto& [name, tensor] : wanted) tensor.copy_(stored.at(name));
}

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: " << argv[0] << " WEIGHTS.pt INPUTS.bin OUTPUTS.bin\n";
    return 2;
  }
  try {
    const std::string path = argv[1];
    TensorMap stored = stored_tensors(torch::jit::load(path, torch::kCPU));
    ResNetGenerator generator = generator_for(stored, path);
    load_by_name(*generator, stored, path);
    generator->eval();                           // no dropout or batch norm here; as the book

    std::vector<at::Tensor> inputs = read_tensors(argv[2]);
    const at::Tensor& x = inputs.at(0);
    int64_t channels = stored.at("model.1.weight").size(1);
    if (inputs.size() != 1 || x.dim() != 4 || x.size(1) != channels)
      throw std::runtime_error(std::string(argv[2]) + ": expected one N x " +
                               std::to_string(channels) + " x H x W tensor, got " +
                               std::to_string(inputs.size()) + " starting with " + shape_of(x));

    torch::NoGradGuard no_grad;                  // the book's guard: no autograd graph
    auto start = std::chrono::steady_clock::now();
    at::Tensor y = generator->forward(x);
    std::chrono::duration<double, std::milli> ms = std::chrono::steady_clock::now() - start;

    write_tensors(argv[3], {y});
    int64_t count = 0;
    for (const auto& p : generator->parameters()) count += p.numel();
    std::cout << "generator with " << stored.size() << " tensors, " << count
              << " parameters from " << path << "\n";
    std::cout << "output " << y.sizes() << " in " << ms.count() << " ms\n";
  } catch (const c10::Error& e) {
    std::cerr << "error: " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
