// A minimal test harness for the C++ unit tests: no download, no library.
//
//   TEST(SomeName) { CHECK(x > 0); CHECK_EQ(a, b) << "extra context"; }
//
// Include this header from exactly one source file per test binary: it
// defines `main`, which runs every registered test (or those whose name
// contains argv[1]), prints one line per test and exits non-zero when any
// check failed or when no test ran. A failed check reports its file, line
// and expression, then ends the current test.
#ifndef TF_INTERLEAVE_CC_TESTS_TEST_MAIN_H_
#define TF_INTERLEAVE_CC_TESTS_TEST_MAIN_H_

#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace tf_interleave_test {

struct TestCase {
  const char* name;
  std::function<void()> body;
};

inline std::vector<TestCase>& Registry() {
  static std::vector<TestCase> tests;
  return tests;
}

struct Registrar {
  Registrar(const char* name, std::function<void()> body) {
    Registry().push_back({name, std::move(body)});
  }
};

// Thrown by a failed check to end the current test.
struct CheckFailure {};

// Collects the message of a failed check; throws when destroyed, after the
// caller has streamed any extra context into it.
class FailureMessage {
 public:
  FailureMessage(const char* file, int line, const std::string& what) {
    stream_ << file << ":" << line << ": check failed: " << what;
  }
  ~FailureMessage() noexcept(false) {
    std::cerr << stream_.str() << std::endl;
    throw CheckFailure{};
  }
  template <typename T>
  FailureMessage& operator<<(const T& value) {
    stream_ << value;
    return *this;
  }

 private:
  std::ostringstream stream_;
};

template <typename T>
std::string Show(const T& value) {
  std::ostringstream out;
  out << value;
  return out.str();
}

template <typename T>
std::string Show(const std::vector<T>& values) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < values.size(); ++i) {
    out << (i ? ", " : "") << Show(values[i]);
  }
  out << "]";
  return out.str();
}

inline int RunAll(int argc, char** argv) {
  const char* filter = argc > 1 ? argv[1] : "";
  int run = 0;
  int failed = 0;
  for (const TestCase& test : Registry()) {
    if (std::strstr(test.name, filter) == nullptr) continue;
    ++run;
    const auto start = std::chrono::steady_clock::now();
    bool ok = true;
    try {
      test.body();
    } catch (const CheckFailure&) {
      ok = false;
    }
    const double seconds = std::chrono::duration<double>(
                               std::chrono::steady_clock::now() - start)
                               .count();
    std::printf("[%s] %s (%.3f s)\n", ok ? "  OK  " : "FAILED", test.name,
                seconds);
    std::fflush(stdout);
    if (!ok) ++failed;
  }
  std::printf("%d tests, %d failed\n", run, failed);
  if (run == 0) {
    std::fprintf(stderr, "no test matched \"%s\"\n", filter);
    return 1;
  }
  return failed == 0 ? 0 : 1;
}

}  // namespace tf_interleave_test

#define TEST(name)                                                   \
  static void name##_Test();                                         \
  static const ::tf_interleave_test::Registrar name##_registrar(     \
      #name, name##_Test);                                           \
  static void name##_Test()

// `if (ok) {} else` lets the caller stream context after a failed check.
#define CHECK(condition)                                             \
  if (condition) {                                                   \
  } else                                                             \
    ::tf_interleave_test::FailureMessage(__FILE__, __LINE__, #condition)

#define CHECK_EQ(a, b)                                                   \
  if ((a) == (b)) {                                                      \
  } else                                                                 \
    ::tf_interleave_test::FailureMessage(                                \
        __FILE__, __LINE__,                                              \
        std::string(#a " == " #b " (") + ::tf_interleave_test::Show(a) + \
            " vs " + ::tf_interleave_test::Show(b) + ")")

int main(int argc, char** argv) {
  return ::tf_interleave_test::RunAll(argc, argv);
}

#endif  // TF_INTERLEAVE_CC_TESTS_TEST_MAIN_H_
