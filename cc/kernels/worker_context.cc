#include "cc/kernels/worker_context.h"

#ifdef __linux__
#include <sys/prctl.h>
#endif

#include <utility>

namespace tf_interleave {

using ::tensorflow::data::IteratorContext;

void WorkerThreads::Add(std::thread::id thread) {
  tensorflow::mutex_lock l(mu_);
  threads_.insert(thread);
}

void WorkerThreads::Remove(std::thread::id thread) {
  tensorflow::mutex_lock l(mu_);
  threads_.erase(thread);
}

bool WorkerThreads::Contains(std::thread::id thread) const {
  tensorflow::tf_shared_lock l(mu_);
  return threads_.contains(thread);
}

WorkerContext::WorkerContext(IteratorContext* base,
                             std::shared_ptr<WorkerThreads> workers)
    : workers_(std::move(workers)) {
  workers_->Add(std::this_thread::get_id());
  IteratorContext::Params params(base);
  params.runner = [workers = workers_, pool_runner = *base->runner()](
                      std::function<void()> closure) {
    if (workers->Contains(std::this_thread::get_id())) {
      closure();
    } else {
      pool_runner(std::move(closure));
    }
  };
  ctx_ = std::make_unique<IteratorContext>(std::move(params));
}

WorkerContext::~WorkerContext() {
  workers_->Remove(std::this_thread::get_id());
}

void UsePreciseTimers() {
#ifdef __linux__
  prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
#endif
}

}  // namespace tf_interleave
