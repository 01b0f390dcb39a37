// An emulated CUDA launch on the CPU, for tests: runs a kernel of csrc/cuda/kernels.cuh over a grid,
// block by block, with the threads of a block as fibers (ucontext) that really wait for each other
// at FCN_SYNCTHREADS().
//
// Scheduling is deterministic and adversarial: between two barriers each thread runs alone to its
// next barrier (or its end), in ascending thread order in even phases and descending in odd ones.
// So a missing barrier lets a thread read shared memory a later thread has not written yet, and the
// shared memory starts every block filled with NaN bytes (0xFF), so such a read shows in the result
// rather than picking up the previous block's value.  Fibers rather than OS threads: thousands of
// blocks per test run in milliseconds, and the result does not depend on the OS scheduler.
#pragma once

#include <ucontext.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <functional>
#include <stdexcept>
#include <vector>

#define FCN_EMULATED_LAUNCH 1
#define FCN_GLOBAL
#define FCN_SHARED_ARRAY(type, name, n) type* name = ::fcn_emulated::shared_array<type>(n)
#define FCN_SYNCTHREADS() ::fcn_emulated::syncthreads()

struct fcn_dim3 {
  unsigned x = 0, y = 0, z = 0;
};

// CUDA's built-in index variables; the scheduler sets them before it resumes a thread.
inline fcn_dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace fcn_emulated {

constexpr std::size_t kSharedBytes = 48 * 1024;  // CUDA's default static shared memory per block
constexpr std::size_t kStackBytes = 256 * 1024;

struct Fiber {
  ucontext_t ctx;
  std::vector<char> stack;
  std::size_t shared_cursor = 0;  // the next FCN_SHARED_ARRAY's offset in the block's buffer
  bool done = false;
};

struct Block {
  ucontext_t scheduler;
  std::vector<Fiber> fibers;
  alignas(std::max_align_t) unsigned char shared[kSharedBytes];
  const std::function<void()>* body = nullptr;
  unsigned current = 0;
  int64_t syncs = 0;  // barriers passed, all blocks together (a test checks a kernel has some)
};

inline Block*& block() {
  static Block* b = nullptr;
  return b;
}

// Each thread's i-th shared array is the same memory for every thread of the block, as __shared__.
template <typename T>
T* shared_array(std::size_t n) {
  Fiber& f = block()->fibers[block()->current];
  std::size_t at = (f.shared_cursor + alignof(T) - 1) / alignof(T) * alignof(T);
  if (at + n * sizeof(T) > kSharedBytes) {  // no exception can cross a fiber's boundary
    std::fputs("emulated launch: shared memory overflow\n", stderr);
    std::abort();
  }
  f.shared_cursor = at + n * sizeof(T);
  return reinterpret_cast<T*>(block()->shared + at);
}

// The calling thread waits here until every live thread of its block has arrived.
inline void syncthreads() {
  Block* b = block();
  ++b->syncs;
  swapcontext(&b->fibers[b->current].ctx, &b->scheduler);
}

inline void fiber_main() {
  Block* b = block();
  (*b->body)();
  b->fibers[b->current].done = true;  // uc_link returns to the scheduler
}

// Runs body() as blockDim threads of each of the grid's blocks; returns the barriers passed.
inline int64_t launch(unsigned grid, unsigned threads, const std::function<void()>& body) {
  if (threads == 0 || grid == 0) throw std::runtime_error("emulated launch: empty grid or block");
  auto b = std::make_unique<Block>();
  b->fibers.resize(threads);
  for (Fiber& f : b->fibers) f.stack.resize(kStackBytes);
  b->body = &body;
  block() = b.get();
  gridDim = {grid, 1, 1};
  blockDim = {threads, 1, 1};
  for (unsigned bx = 0; bx < grid; ++bx) {
    blockIdx = {bx, 0, 0};
    std::memset(b->shared, 0xFF, kSharedBytes);
    for (Fiber& f : b->fibers) {
      getcontext(&f.ctx);
      f.ctx.uc_stack.ss_sp = f.stack.data();
      f.ctx.uc_stack.ss_size = f.stack.size();
      f.ctx.uc_link = &b->scheduler;
      makecontext(&f.ctx, fiber_main, 0);
      f.shared_cursor = 0;
      f.done = false;
    }
    for (int64_t phase = 0;; ++phase) {
      bool any = false;
      for (unsigned k = 0; k < threads; ++k) {
        const unsigned t = phase % 2 == 0 ? k : threads - 1 - k;
        if (b->fibers[t].done) continue;
        any = true;
        b->current = t;
        threadIdx = {t, 0, 0};
        swapcontext(&b->scheduler, &b->fibers[t].ctx);
      }
      if (!any) break;
    }
  }
  block() = nullptr;
  return b->syncs;
}

}  // namespace fcn_emulated
