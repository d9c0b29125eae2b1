// The emulated device's execution engine (test infrastructure, never part of
// the installed library): runs a kernel's blocks one after another, the
// threads of a block as fibers (ucontext; the default) or as OS threads (the
// ThreadSanitizer build, or QRMS_EMU_THREADS=1) so that shared-memory races
// between threads are reported. Barriers, warp shuffles and votes check that
// every thread they name takes part; a divergent one stops the program with
// the kernel, the block, the threads and the source lines involved.
//
// Settings (environment): QRMS_EMU_SMS (emulated SMs, default 2),
// QRMS_EMU_BLOCKS_PER_SM (occupancy answer, default 2), QRMS_EMU_THREADS
// (1: OS threads), QRMS_EMU_TRACE (1: one line per launch on stderr).
#pragma once

#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#if defined(__SANITIZE_THREAD__)
#define QRMS_EMU_TSAN 1
#endif
#if defined(__SANITIZE_ADDRESS__)
#define QRMS_EMU_ASAN 1
#endif
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define QRMS_EMU_TSAN 1
#endif
#if __has_feature(address_sanitizer)
#define QRMS_EMU_ASAN 1
#endif
#endif
#if defined(QRMS_EMU_ASAN)
#include <sanitizer/common_interface_defs.h>
#endif

struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace emu {

// ---- settings --------------------------------------------------------------

inline int env_int(const char *name, int fallback) {
  const char *v = std::getenv(name);
  return v && *v ? std::atoi(v) : fallback;
}

struct Settings {
  int sms = env_int("QRMS_EMU_SMS", 2);
  int blocks_per_sm = env_int("QRMS_EMU_BLOCKS_PER_SM", 2);
#if defined(QRMS_EMU_TSAN)
  bool os_threads = env_int("QRMS_EMU_THREADS", 1) != 0;
#else
  bool os_threads = env_int("QRMS_EMU_THREADS", 0) != 0;
#endif
  bool trace = env_int("QRMS_EMU_TRACE", 0) != 0;
};

inline const Settings &settings() {
  static const Settings s;
  return s;
}

// ---- one block's threads ---------------------------------------------------

struct Site {
  const char *file = nullptr;
  int line = 0;
  std::string str() const { return file ? std::string(file) + ":" + std::to_string(line) : std::string("?"); }
  bool operator!=(const Site &o) const { return line != o.line || (file != o.file && std::strcmp(file, o.file) != 0); }
};

struct Block;

// What kernel code sees as threadIdx and friends.
struct ThreadCtx {
  Block *block = nullptr;
  uint3 tid{0, 0, 0};
  int linear = 0;
  const char *where = "running";  // for deadlock reports
  Site site;
};

inline thread_local ThreadCtx *tls_thread = nullptr;

inline ThreadCtx &cur() {
  if (!tls_thread) {
    std::fprintf(stderr, "emu: device code called outside a kernel launch\n");
    std::abort();
  }
  return *tls_thread;
}

// One warp's collective (shuffle, vote, __syncwarp): one at a time per warp.
struct Warp {
  std::mutex mu;  // OS-thread mode only: per warp, so warps do not order each other
  std::condition_variable cv;
  unsigned mask = 0;  // of the pending collective; 0: none pending
  unsigned arrived = 0;
  unsigned exited = 0;  // lanes that have returned
  uint64_t gen = 0;
  Site site;
  const char *op = nullptr;
  uint64_t vals[32] = {};
  uint64_t snap[32] = {};
};

struct Block {
  const char *kernel = "?";
  uint3 idx{0, 0, 0};
  dim3 dim, grid;
  int nthreads = 0;
  std::vector<ThreadCtx> th;
  std::vector<Warp> warps;
  // __syncthreads
  std::mutex mu;
  std::condition_variable cv;
  int arrived = 0, exited = 0;
  uint64_t gen = 0;
  Site site;
  int first_at_barrier = -1;
  std::atomic<uint64_t> progress{0};
  std::atomic<int> votes{0};  // __syncthreads_count/and/or
  bool os_threads = false;

  [[noreturn]] void fail(int thread, const std::string &what) {
    std::fprintf(stderr,
                 "emu: error in kernel %s, block (%u,%u,%u), thread %d: %s\n"
                 "emu: (the emulated device stops here; rerun with QRMS_EMU_TRACE=1 to list the launches)\n",
                 kernel, idx.x, idx.y, idx.z, thread, what.c_str());
    std::fflush(stderr);
    std::abort();
  }
  unsigned lanes_of(int w) const {
    const int n = std::min(32, nthreads - 32 * w);
    return n >= 32 ? 0xffffffffu : ((1u << n) - 1u);
  }
};

// ---- fibers -----------------------------------------------------------------

#if defined(QRMS_EMU_ASAN)
constexpr size_t kFiberStack = size_t(1) << 20;
#else
constexpr size_t kFiberStack = size_t(256) << 10;
#endif

struct Fiber {
  ucontext_t ctx;
  void *stack = nullptr;  // guard page first
  bool done = false;
  bool started = false;
  void *jb[5] = {};  // __builtin_setjmp buffer of a suspended fiber
  void *fake = nullptr;
  std::function<void()> *body = nullptr;
};

struct Scheduler {
  ucontext_t main;
  void *main_jb[5] = {};
  std::vector<Fiber> fibers;
  int current = -1;
  const void *main_bottom = nullptr;
  size_t main_size = 0;
};

inline Scheduler &scheduler() {
  static Scheduler s;
  return s;
}

// Switching: swapcontext under AddressSanitizer (which is told about each
// switch); elsewhere __builtin_setjmp/__builtin_longjmp after a fiber's first
// entry, which skip swapcontext's signal-mask system call (the suite's
// barriers cost one switch per thread).
[[noreturn]] __attribute__((noinline)) inline void jump(void **jb) { __builtin_longjmp(jb, 1); }

inline void fiber_entry();

// From the scheduler into fiber i; returns when it yields or finishes.
__attribute__((noinline)) inline void enter_fiber(Scheduler &s, Fiber &f, void *bottom) {
#if defined(QRMS_EMU_ASAN)
  void *fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, bottom, kFiberStack);
  swapcontext(&s.main, &f.ctx);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  (void)bottom;
  if (__builtin_setjmp(s.main_jb) == 0) {
    if (!f.started) {
      f.started = true;
      setcontext(&f.ctx);
    }
    jump(f.jb);
  }
#endif
}

// From the running fiber back to the scheduler.
__attribute__((noinline)) inline void switch_to_main(bool finished) {
  Scheduler &s = scheduler();
  Fiber &f = s.fibers[size_t(s.current)];
#if defined(QRMS_EMU_ASAN)
  __sanitizer_start_switch_fiber(finished ? nullptr : &f.fake, s.main_bottom, s.main_size);
  swapcontext(&f.ctx, &s.main);
  __sanitizer_finish_switch_fiber(f.fake, &s.main_bottom, &s.main_size);
#else
  if (finished) jump(s.main_jb);
  if (__builtin_setjmp(f.jb) == 0) jump(s.main_jb);
#endif
}

inline void fiber_entry() {
  Scheduler &s = scheduler();
#if defined(QRMS_EMU_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &s.main_bottom, &s.main_size);
#endif
  Fiber &f = s.fibers[size_t(s.current)];
  (*f.body)();
  f.done = true;
  switch_to_main(true);
}

// Wait in device code until ready() holds. Fibers give the CPU to the next
// thread; OS threads sleep on the condition variable of `mu`.
template <typename Ready>
void wait_until(Block &b, std::unique_lock<std::mutex> *lock, std::condition_variable *cv, const Ready &ready) {
  if (!b.os_threads) {
    while (!ready()) switch_to_main(false);
    return;
  }
  uint64_t seen = b.progress.load();
  auto since = std::chrono::steady_clock::now();
  while (!ready()) {
    cv->wait_for(*lock, std::chrono::milliseconds(200));
    const uint64_t now = b.progress.load();
    if (now != seen) {
      seen = now;
      since = std::chrono::steady_clock::now();
    } else if (std::chrono::steady_clock::now() - since > std::chrono::seconds(30)) {
      b.fail(cur().linear, std::string("no progress for 30 s at ") + cur().where + " " + cur().site.str() +
                               " (a thread waits for others that never arrive)");
    }
  }
}

// ---- __syncthreads ----------------------------------------------------------

inline void syncthreads(const char *file, int line) {
  ThreadCtx &t = cur();
  Block &b = *t.block;
  const Site here{file, line};
  std::unique_lock<std::mutex> lock(b.mu, std::defer_lock);
  if (b.os_threads) lock.lock();
  if (b.exited > 0)
    b.fail(t.linear, "__syncthreads at " + here.str() + " is not reached by every thread of the block (" +
                         std::to_string(b.exited) + " thread(s) have already returned)");
  if (b.arrived == 0) {
    b.site = here;
    b.first_at_barrier = t.linear;
  } else if (b.site != here) {
    b.fail(t.linear, "divergent __syncthreads: this thread is at " + here.str() + ", thread " +
                         std::to_string(b.first_at_barrier) + " at " + b.site.str());
  }
  t.where = "__syncthreads";
  t.site = here;
  const uint64_t my_gen = b.gen;
  ++b.arrived;
  b.progress.fetch_add(1);
  if (b.arrived == b.nthreads) {
    b.arrived = 0;
    ++b.gen;
    if (b.os_threads) b.cv.notify_all();
  } else {
    wait_until(b, &lock, &b.cv, [&] { return b.gen != my_gen; });
  }
  t.where = "running";
}

// __syncthreads_count (and _and, _or): the threads' predicates summed across
// one barrier; two more barriers let every thread read the sum before it is
// cleared for the next call.
inline int syncthreads_count(const char *file, int line, bool p) {
  Block &b = *cur().block;
  if (p) b.votes.fetch_add(1);
  syncthreads(file, line);
  const int n = b.votes.load();
  syncthreads(file, line);
  if (cur().linear == 0) b.votes.store(0);
  syncthreads(file, line);
  return n;
}

// ---- warp collectives -------------------------------------------------------

// Every lane named in `mask` deposits `value`; returns the 32 deposits once all
// have arrived (lanes outside the mask read 0).
inline void warp_collective(const char *op, unsigned mask, uint64_t value, const char *file, int line,
                            uint64_t (&out)[32]) {
  ThreadCtx &t = cur();
  Block &b = *t.block;
  const int lane = t.linear % 32, wi = t.linear / 32;
  Warp &w = b.warps[size_t(wi)];
  const Site here{file, line};
  std::unique_lock<std::mutex> lock(w.mu, std::defer_lock);
  if (b.os_threads) lock.lock();
  char buf[160];
  if (!(mask >> lane & 1u)) {
    std::snprintf(buf, sizeof buf, "%s at %s: mask 0x%08x does not include the calling lane %d", op,
                  here.str().c_str(), mask, lane);
    b.fail(t.linear, buf);
  }
  if (mask & ~b.lanes_of(wi)) {
    std::snprintf(buf, sizeof buf, "%s at %s: mask 0x%08x names lanes that do not exist (warp has 0x%08x)", op,
                  here.str().c_str(), mask, b.lanes_of(wi));
    b.fail(t.linear, buf);
  }
  if (mask & w.exited) {
    std::snprintf(buf, sizeof buf, "%s at %s: mask 0x%08x names lanes that have already returned (0x%08x)", op,
                  here.str().c_str(), mask, mask & w.exited);
    b.fail(t.linear, buf);
  }
  if (w.arrived == 0) {
    w.mask = mask;
    w.site = here;
    w.op = op;
  } else if (w.mask != mask || w.site != here || std::strcmp(w.op, op) != 0) {
    std::snprintf(buf, sizeof buf, "divergent warp collective: this lane calls %s at %s (mask 0x%08x), ", op,
                  here.str().c_str(), mask);
    b.fail(t.linear, buf + std::string("others of the warp wait in ") + w.op + " at " + w.site.str() + " (mask " +
                         std::to_string(w.mask) + ")");
  }
  t.where = op;
  t.site = here;
  w.vals[lane] = value;
  w.arrived |= 1u << lane;
  const uint64_t my_gen = w.gen;
  b.progress.fetch_add(1);
  if (w.arrived == w.mask) {
    for (int l = 0; l < 32; ++l) w.snap[l] = (w.mask >> l & 1u) ? w.vals[l] : 0;
    w.arrived = 0;
    w.mask = 0;
    ++w.gen;
    if (b.os_threads) w.cv.notify_all();
  } else {
    wait_until(b, &lock, &w.cv, [&] { return w.gen != my_gen; });
  }
  std::memcpy(out, w.snap, sizeof out);
  t.where = "running";
}

// A thread returned from the kernel: barriers or warp collectives waiting
// for it can never complete.
inline void thread_exit(ThreadCtx &t) {
  Block &b = *t.block;
  const int lane = t.linear % 32, wi = t.linear / 32;
  {
    Warp &w = b.warps[size_t(wi)];
    std::unique_lock<std::mutex> lock(w.mu, std::defer_lock);
    if (b.os_threads) lock.lock();
    if (w.arrived && (w.mask >> lane & 1u))
      b.fail(t.linear, std::string("returned while lanes of its warp wait for it in ") + w.op + " at " +
                           w.site.str());
    w.exited |= 1u << lane;
  }
  std::unique_lock<std::mutex> lock(b.mu, std::defer_lock);
  if (b.os_threads) lock.lock();
  if (b.arrived > 0)
    b.fail(t.linear, "returned while " + std::to_string(b.arrived) + " thread(s) wait in __syncthreads at " +
                         b.site.str() + " (thread " + std::to_string(b.first_at_barrier) + " first)");
  ++b.exited;
  b.progress.fetch_add(1);
}

// ---- running a launch -----------------------------------------------------------

inline void *fiber_stack() {
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  void *p = mmap(nullptr, kFiberStack + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
  if (p == MAP_FAILED) {
    std::fprintf(stderr, "emu: cannot map a fiber stack\n");
    std::abort();
  }
  mprotect(p, page, PROT_NONE);  // overflow faults instead of corrupting a neighbour
  return p;
}

inline void run_block_fibers(Block &b, const std::function<void()> &body) {
  Scheduler &s = scheduler();
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  while (s.fibers.size() < size_t(b.nthreads)) {
    s.fibers.emplace_back();
    s.fibers.back().stack = fiber_stack();
  }
  std::vector<std::function<void()>> bodies(size_t(b.nthreads));
  for (int i = 0; i < b.nthreads; ++i) {
    Fiber &f = s.fibers[size_t(i)];
    ThreadCtx *t = &b.th[size_t(i)];
    bodies[size_t(i)] = [t, &body] {
      tls_thread = t;
      body();
      thread_exit(*t);
      tls_thread = nullptr;
    };
    f.body = &bodies[size_t(i)];
    f.done = false;
    f.started = false;
    f.fake = nullptr;
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = static_cast<char *>(f.stack) + page;
    f.ctx.uc_stack.ss_size = kFiberStack;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, fiber_entry, 0);
  }
  int live = b.nthreads;
  bool forward = true;  // alternate the order threads resume in
  while (live > 0) {
    const uint64_t before = b.progress.load();
    for (int k = 0; k < b.nthreads; ++k) {
      const int i = forward ? k : b.nthreads - 1 - k;
      Fiber &f = s.fibers[size_t(i)];
      if (f.done) continue;
      s.current = i;
      tls_thread = &b.th[size_t(i)];
      enter_fiber(s, f, static_cast<char *>(f.stack) + page);
      tls_thread = nullptr;
      if (f.done) --live;
    }
    forward = !forward;
    if (live > 0 && b.progress.load() == before) {
      std::string who;
      for (int i = 0; i < b.nthreads && who.size() < 600; ++i)
        if (!s.fibers[size_t(i)].done)
          who += " thread " + std::to_string(i) + " in " + b.th[size_t(i)].where + " at " + b.th[size_t(i)].site.str() + ";";
      b.fail(-1, "deadlock: every remaining thread waits:" + who);
    }
  }
  s.current = -1;
}

// OS-thread mode: a pool of workers kept across blocks and launches (a
// ThreadSanitizer build creates threads slowly). Worker i runs thread i of
// each block. The workers of a block start together (a start barrier), so
// none finishes before another has begun: the pool's own locking orders
// nothing inside the block, and races between its threads stay visible.
struct Pool {
  std::mutex mu;
  std::condition_variable wake, done;
  std::vector<std::thread> workers;
  uint64_t epoch = 0;
  int started = 0, running = 0;
  Block *block = nullptr;
  const std::function<void()> *body = nullptr;

  void work(int i) {
    uint64_t seen = 0;
    for (;;) {
      Block *b;
      const std::function<void()> *fn;
      {
        std::unique_lock<std::mutex> lock(mu);
        wake.wait(lock, [&] { return epoch != seen && block && i < block->nthreads; });
        seen = epoch;
        b = block;
        fn = body;
        ++started;
        if (started == b->nthreads) wake.notify_all();
        wake.wait(lock, [&] { return started == b->nthreads; });
      }
      ThreadCtx *t = &b->th[size_t(i)];
      tls_thread = t;
      (*fn)();
      thread_exit(*t);
      tls_thread = nullptr;
      std::lock_guard<std::mutex> lock(mu);
      if (--running == 0) done.notify_all();
    }
  }

  void run(Block &b, const std::function<void()> &fn) {
    std::unique_lock<std::mutex> lock(mu);
    while (workers.size() < size_t(b.nthreads)) {
      const int i = int(workers.size());
      workers.emplace_back([this, i] { work(i); });
      workers.back().detach();
    }
    block = &b;
    body = &fn;
    started = 0;
    running = b.nthreads;
    ++epoch;
    wake.notify_all();
    done.wait(lock, [&] { return running == 0; });
    block = nullptr;
  }
};

inline void run_block_threads(Block &b, const std::function<void()> &body) {
  static Pool *pool = new Pool();  // never destroyed: its workers outlive main
  pool->run(b, body);
}

// Runs body() as every thread of every block of the grid, blocks in order.
inline void run_grid(const char *kernel, dim3 grid, dim3 block, const std::function<void()> &body) {
  const Settings &cfg = settings();
  if (cfg.trace)
    std::fprintf(stderr, "emu: launch %s grid (%u,%u,%u) block (%u,%u,%u)\n", kernel, grid.x, grid.y, grid.z, block.x,
                 block.y, block.z);
  const int nthreads = int(block.x * block.y * block.z);
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        Block b;
        b.kernel = kernel;
        b.idx = uint3{bx, by, bz};
        b.dim = block;
        b.grid = grid;
        b.nthreads = nthreads;
        b.os_threads = cfg.os_threads;
        b.th.resize(size_t(nthreads));
        b.warps = std::vector<Warp>(size_t((nthreads + 31) / 32));
        for (int i = 0; i < nthreads; ++i) {
          ThreadCtx &t = b.th[size_t(i)];
          t.block = &b;
          t.linear = i;
          t.tid = uint3{unsigned(i) % block.x, unsigned(i) / block.x % block.y, unsigned(i) / (block.x * block.y)};
        }
        if (b.os_threads)
          run_block_threads(b, body);
        else
          run_block_fibers(b, body);
      }
}

}  // namespace emu
