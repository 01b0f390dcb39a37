// The CPU allocator of a training process: the large blocks of a training step placed in one region
// by a plan made from a recorded step.
//
// A step frees and requests the same large blocks (activations, their gradients, the weight
// gradients) in the same order every time. From glibc's heap (heap.py keeps freed memory there, so
// no block is faulted in again) they fragment it: full-width FCN-32s at 500x500 holds 2.26 GB at
// its peak and a 3.2 GB heap. Here one step is recorded (each large block's size, and when it was
// requested and freed); blocks whose lifetimes overlap get disjoint places in one region, packed
// largest first; later steps get their blocks there, by their order in the step. The region's pages
// are faulted in once and kept, so steps fault nothing and the process holds about the recorded
// peak.
//
// Safety: a block is served from the region only when the step's request has the size recorded at
// its position and no block still alive overlaps its place (a gradient the caller kept from the
// last step, say); otherwise that request and the rest of the step's are mapped on their own
// (mmap, unmapped on free), as are the blocks of unrecorded steps and those outside any step. Two
// such steps in a row (another input size) record a new plan; the old region is unmapped once its
// last block is freed. Blocks under kMinBlock go to the allocator this one replaces.
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <sys/mman.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace fcn {
namespace {

constexpr size_t kMinBlock = size_t(1) << 20;
constexpr size_t kPage = 4096;
constexpr int kWarmupSteps = 1;    // steps run before recording: first calls allocate caches
constexpr int kReplanAfter = 2;    // diverging steps in a row before a new recording

// Shared by the plan and by each block placed in it: unmapped when the last of them lets go.
struct Region {
  char* base = nullptr;
  size_t size = 0;
  ~Region() {
    if (base != nullptr) munmap(base, size);
  }
};

struct Block {
  size_t size;
  std::shared_ptr<Region> region;  // null: mapped on its own
  size_t offset;
};

struct Recorded {
  size_t size;
  int64_t requested, freed;  // event numbers within the recorded step; freed = -1: alive at its end
};

struct Placed {
  size_t size, offset;
};

void* map_pages(size_t size) {
  void* data = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  TORCH_CHECK(data != MAP_FAILED, "step arena: could not map ", size, " bytes");
  return data;
}

// Offsets for blocks whose lifetimes [requested, freed) may overlap: largest first, each at the
// lowest offset clear of the placed blocks it overlaps in time. Returns the region's size.
size_t pack(const std::vector<Recorded>& blocks, int64_t end, std::vector<Placed>& out) {
  std::vector<size_t> order(blocks.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return blocks[a].size > blocks[b].size; });
  out.assign(blocks.size(), Placed{0, 0});
  std::vector<size_t> done;
  size_t top = 0;
  for (size_t i : order) {
    const Recorded& r = blocks[i];
    const int64_t r_end = r.freed < 0 ? end : r.freed;
    std::vector<std::pair<size_t, size_t>> busy;
    for (size_t j : done) {
      const Recorded& q = blocks[j];
      const int64_t q_end = q.freed < 0 ? end : q.freed;
      if (q.requested < r_end && r.requested < q_end) busy.emplace_back(out[j].offset, out[j].offset + q.size);
    }
    std::sort(busy.begin(), busy.end());
    size_t offset = 0;
    for (const auto& [lo, hi] : busy) {
      if (offset + r.size <= lo) break;
      offset = std::max(offset, hi);
    }
    out[i] = Placed{r.size, offset};
    top = std::max(top, offset + r.size);
    done.push_back(i);
  }
  return top;
}

class StepArena final : public c10::Allocator {
 public:
  void set_small(c10::Allocator* small) { small_ = small; }

  c10::DataPtr allocate(size_t n) override {
    if (n < kMinBlock) return small_->allocate(n);
    const size_t size = (n + kPage - 1) / kPage * kPage;
    std::lock_guard<std::mutex> lock(mutex_);
    void* data = from_plan(size);
    if (data == nullptr) {
      data = map_pages(size);
      live_[data] = Block{size, nullptr, 0};
      if (in_step_) ++mapped_in_step_;
      if (recording_) {
        recorded_at_[data] = recorded_.size();
        recorded_.push_back(Recorded{size, events_++, -1});
      }
    }
    // context == data: raw_allocate (oneDNN's scratch buffers) requires it
    return {data, data, &StepArena::release, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &StepArena::release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  static StepArena* instance() {
    static StepArena* arena = new StepArena();  // never destroyed: blocks may outlive exit
    return arena;
  }

  void begin_step() {
    std::lock_guard<std::mutex> lock(mutex_);
    in_step_ = true;
    position_ = 0;
    events_ = 0;
    diverged_ = false;
    mapped_in_step_ = served_in_step_ = 0;
    recording_ = !unplannable_ && plan_.empty() && steps_unplanned_ >= kWarmupSteps;
    recorded_.clear();
    recorded_at_.clear();
  }

  void end_step() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!in_step_) return;
    in_step_ = false;
    if (recording_) {
      recording_ = false;
      make_plan();
      return;
    }
    if (plan_.empty()) {
      if (steps_unplanned_ < kWarmupSteps) ++steps_unplanned_;
      return;
    }
    diverged_steps_ = diverged_ ? diverged_steps_ + 1 : 0;
    if (diverged_steps_ >= kReplanAfter) {
      drop_plan();
      steps_unplanned_ = kWarmupSteps;  // the next step records
    }
  }

  // (planned blocks, their bytes, region bytes, served from the region in the last step, mapped on
  //  their own in the last step, recordings so far, whether the last step diverged from the plan)
  std::vector<int64_t> stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    int64_t planned_bytes = 0;
    for (const Placed& p : plan_) planned_bytes += int64_t(p.size);
    return {int64_t(plan_.size()), planned_bytes, region_ ? int64_t(region_->size) : 0, served_in_step_,
            mapped_in_step_, recordings_, int64_t(diverged_)};
  }

 private:
  // Every pointer this allocator handed out comes back here, the small allocator's too (its own
  // deleter is in their DataPtr, but raw_deallocate calls this allocator's raw_deleter).
  static void release(void* data) { instance()->put(data); }

  void* from_plan(size_t size) {
    if (!in_step_ || recording_ || plan_.empty() || diverged_) return nullptr;
    const int64_t k = position_++;
    if (k >= int64_t(plan_.size()) || plan_[k].size != size || overlaps_live(plan_[k].offset, size)) {
      diverged_ = true;
      return nullptr;
    }
    void* data = region_->base + plan_[k].offset;
    live_[data] = Block{size, region_, plan_[k].offset};
    region_live_[plan_[k].offset] = size;
    ++served_in_step_;
    return data;
  }

  bool overlaps_live(size_t offset, size_t size) const {
    auto next = region_live_.lower_bound(offset);
    if (next != region_live_.end() && next->first < offset + size) return true;
    if (next == region_live_.begin()) return false;
    auto prev = std::prev(next);
    return prev->first + prev->second > offset;
  }

  void put(void* data) {
    std::shared_ptr<Region> region;
    size_t size = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = live_.find(data);
      if (it == live_.end()) {
        small_->raw_deleter()(data);
        return;
      }
      Block block = it->second;
      live_.erase(it);
      if (recording_) {
        auto r = recorded_at_.find(data);
        if (r != recorded_at_.end()) {
          recorded_[r->second].freed = events_++;
          recorded_at_.erase(r);
        }
      }
      if (block.region == nullptr) {
        size = block.size;
      } else {
        if (block.region == region_) region_live_.erase(block.offset);
        region = std::move(block.region);  // a stale region is unmapped with its last block
      }
    }
    if (size != 0) munmap(data, size);
  }

  // Called with the lock held, after a recorded step: its blocks packed into a new region. Where
  // the region cannot be mapped, no plan: blocks stay mapped on their own, and no step is recorded
  // again.
  void make_plan() {
    ++recordings_;
    std::vector<Placed> placed;
    const size_t top = pack(recorded_, events_, placed);
    recorded_at_.clear();
    if (placed.empty()) return;
    void* base = mmap(nullptr, top, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) {
      unplannable_ = true;
      return;
    }
    plan_ = std::move(placed);
    region_ = std::make_shared<Region>();
    region_->base = static_cast<char*>(base);
    region_->size = top;
    region_live_.clear();
  }

  void drop_plan() {
    plan_.clear();
    region_.reset();  // unmapped now, or with the last of its blocks still alive
    region_live_.clear();
    diverged_steps_ = 0;
  }

  c10::Allocator* small_ = nullptr;
  std::mutex mutex_;
  std::unordered_map<void*, Block> live_;
  std::shared_ptr<Region> region_;
  std::map<size_t, size_t> region_live_;  // offset -> size of the current region's live blocks
  std::vector<Placed> plan_;
  std::vector<Recorded> recorded_;
  std::unordered_map<void*, size_t> recorded_at_;
  bool in_step_ = false, recording_ = false, diverged_ = false;
  bool unplannable_ = false;  // a region could not be mapped: no step is recorded again
  int64_t position_ = 0, events_ = 0, served_in_step_ = 0, mapped_in_step_ = 0, recordings_ = 0;
  int steps_unplanned_ = 0, diverged_steps_ = 0;
};

bool install_step_arena() {
  static std::once_flag once;
  std::call_once(once, [] {
    StepArena* arena = StepArena::instance();
    arena->set_small(c10::GetCPUAllocator());
    c10::SetCPUAllocator(arena, /*priority=*/255);
  });
  return true;
}

void step_arena_begin() { StepArena::instance()->begin_step(); }
void step_arena_end() { StepArena::instance()->end_step(); }
std::vector<int64_t> step_arena_stats() { return StepArena::instance()->stats(); }

}  // namespace
}  // namespace fcn

TORCH_LIBRARY_FRAGMENT(fcn_caffe_repro, m) {
  m.def("install_step_arena() -> bool", &fcn::install_step_arena);
  m.def("step_arena_begin() -> ()", &fcn::step_arena_begin);
  m.def("step_arena_end() -> ()", &fcn::step_arena_end);
  m.def("step_arena_stats() -> int[]", &fcn::step_arena_stats);
}
