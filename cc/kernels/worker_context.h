// Where the functions of a worker's calls run.
//
// A call to a nested iterator runs functions (`map_func`, a nested dataset's
// own generator or `map`) through its context's runner. By default that
// runner queues them on the inter-op pool, whose few threads (one per core)
// would cap how many slow opens or Python functions run at once, while the
// calling worker only waits. A worker's context runs them on the calling
// thread instead, when that thread is one of the pool's running workers.
#ifndef TF_INTERLEAVE_CC_KERNELS_WORKER_CONTEXT_H_
#define TF_INTERLEAVE_CC_KERNELS_WORKER_CONTEXT_H_

#include <functional>
#include <memory>
#include <thread>  // NOLINT(build/c++11): std::thread::id
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "tensorflow/core/framework/dataset.h"
#include "tensorflow/core/platform/mutex.h"
#include "tensorflow/core/platform/thread_annotations.h"

namespace tf_interleave {

// The threads of one pool's running workers. A worker's thread id is listed
// only while it runs, so an id that the system reuses later is not taken
// for a worker.
class WorkerThreads {
 public:
  void Add(std::thread::id thread) TF_LOCKS_EXCLUDED(mu_) {
    tensorflow::mutex_lock l(mu_);
    threads_.insert(thread);
  }
  void Remove(std::thread::id thread) TF_LOCKS_EXCLUDED(mu_) {
    tensorflow::mutex_lock l(mu_);
    threads_.erase(thread);
  }
  bool Contains(std::thread::id thread) const TF_LOCKS_EXCLUDED(mu_) {
    tensorflow::tf_shared_lock l(mu_);
    return threads_.contains(thread);
  }

 private:
  mutable tensorflow::mutex mu_;
  absl::flat_hash_set<std::thread::id, std::hash<std::thread::id>> threads_
      TF_GUARDED_BY(mu_);
};

// A worker's context, made on the worker's thread for as long as the worker
// runs; that thread counts in `workers` meanwhile. Any worker of the pool
// runs closures inline, not only the one whose context it is: nested
// datasets such as `concatenate` and `zip` keep the context they opened
// with and pass it to every later call, which another worker may make.
// Closures scheduled from any other thread (the threads of a nested parallel
// `map`) still go to `base`'s runner, so nested parallelism is kept.
class WorkerContext {
 public:
  WorkerContext(tensorflow::data::IteratorContext* base,
                std::shared_ptr<WorkerThreads> workers)
      : workers_(std::move(workers)) {
    workers_->Add(std::this_thread::get_id());
    tensorflow::data::IteratorContext::Params params(base);
    params.runner = [workers = workers_, pool_runner = *base->runner()](
                        std::function<void()> closure) {
      if (workers->Contains(std::this_thread::get_id())) {
        closure();
      } else {
        pool_runner(std::move(closure));
      }
    };
    ctx_ = std::make_unique<tensorflow::data::IteratorContext>(
        std::move(params));
  }
  ~WorkerContext() { workers_->Remove(std::this_thread::get_id()); }
  WorkerContext(const WorkerContext&) = delete;
  WorkerContext& operator=(const WorkerContext&) = delete;

  tensorflow::data::IteratorContext* get() const { return ctx_.get(); }

 private:
  const std::shared_ptr<WorkerThreads> workers_;
  std::unique_ptr<tensorflow::data::IteratorContext> ctx_;
};

}  // namespace tf_interleave

#endif  // TF_INTERLEAVE_CC_KERNELS_WORKER_CONTEXT_H_
