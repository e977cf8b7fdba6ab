// One forward of a TorchScript model through four of libtorch's ways to run
// it, warm (back to back) and cold (after sweeping 16 MB and sleeping 20 ms),
// to see whether any of them is much cheaper cold (BENCHMARKS.md §36).
//
//   bash benchmarks/libtorch-cold/run.sh [model.pt]
#include <ATen/Parallel.h>
#include <torch/csrc/jit/passes/freeze_module.h>
#include <torch/csrc/jit/runtime/static/impl.h>
#include <torch/script.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

using Clock = std::chrono::steady_clock;

static std::vector<char> sweep_memory(16 << 20, 1);

static void sweep() {
  for (size_t i = 0; i < sweep_memory.size(); i += 64) sweep_memory[i]++;
}

template <class F>
static double median_us(F forward, int samples, bool cold) {
  std::vector<double> times;
  for (int i = 0; i < samples; i++) {
    if (cold) {
      sweep();
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    auto start = Clock::now();
    forward();
    times.push_back(std::chrono::duration<double, std::micro>(Clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s model.pt [rows]\n", argv[0]);
    return 2;
  }
  at::set_num_threads(1);
  auto module = torch::jit::load(argv[1]);
  module.eval();
  int rows = argc > 2 ? atoi(argv[2]) : 1;
  // Features a row: the example models take 5 (a model's manifest says).
  int features = argc > 3 ? atoi(argv[3]) : 5;
  auto x = torch::randn({rows, features});
  auto frozen = torch::jit::freeze_module(module);
  torch::jit::StaticModule runtime(frozen);

  auto interpreter = [&] { torch::NoGradGuard g; module.forward({x}).toTensor(); };
  auto inference_mode = [&] { c10::InferenceMode g; module.forward({x}).toTensor(); };
  auto frozen_module = [&] { torch::NoGradGuard g; frozen.forward({x}).toTensor(); };
  auto static_runtime = [&] { runtime(std::vector<c10::IValue>{x}, {}).toTensor(); };
  {
    torch::NoGradGuard g;
    auto a = module.forward({x}).toTensor();
    auto b = runtime(std::vector<c10::IValue>{x}, {}).toTensor();
    printf("static runtime's output bit-identical to the interpreter's: %s\n",
           torch::equal(a, b) ? "yes" : "NO");
  }
  printf("%d row(s) of %d features; median µs of a forward\n", rows, features);
  printf("%-5s %12s %15s %14s %15s\n", "", "interpreter", "InferenceMode", "frozen", "static runtime");
  for (int round = 0; round < 3; round++) {
    for (bool cold : {false, true}) {
      int samples = cold ? 150 : 20000;
      double a = median_us(interpreter, samples, cold);
      double b = median_us(inference_mode, samples, cold);
      double c = median_us(frozen_module, samples, cold);
      double d = median_us(static_runtime, samples, cold);
      printf("%-5s %12.1f %15.1f %14.1f %15.1f\n", cold ? "cold" : "warm", a, b, c, d);
    }
  }
}
