"""Builds tf_interleave: compiles the op library against the installed TensorFlow.

`pip install .` runs this. The C++ sources and extra flags come from
`cc/sources.bzl`, the same list the Bazel build uses; TensorFlow's own flags
come from `tf.sysconfig` of the TensorFlow installed next to the interpreter
(found in a subprocess, so that pip's isolated build environment, which does
not contain TensorFlow, still builds against the user's TensorFlow).

Environment variables:
  TF_INTERLEAVE_SANITIZE: "address" builds with AddressSanitizer + UBSan.
  TF_INTERLEAVE_JOBS: parallel compile jobs (default: number of CPUs).
"""

import concurrent.futures
import hashlib
import json
import os
import pathlib
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_ext import build_ext

ROOT = pathlib.Path(__file__).resolve().parent
LIBRARY_NAME = "_tf_interleave_ops.so"

_TENSORFLOW_PROBE = """
import json, tensorflow as tf
print(json.dumps({
    "version": tf.version.VERSION,
    "compile_flags": tf.sysconfig.get_compile_flags(),
    "link_flags": tf.sysconfig.get_link_flags(),
}))
"""


def read_source_lists() -> dict:
  """Evaluates `cc/sources.bzl` (Starlark that is also valid Python)."""
  namespace: dict = {}
  exec(compile((ROOT / "cc" / "sources.bzl").read_text(), "sources.bzl", "exec"),
       namespace)
  return namespace


def probe_tensorflow() -> dict:
  """Returns the installed TensorFlow's version and build flags."""
  env = dict(os.environ)
  # pip's build isolation hides site-packages through these two variables.
  env.pop("PYTHONPATH", None)
  env.pop("PYTHONNOUSERSITE", None)
  env["TF_CPP_MIN_LOG_LEVEL"] = "3"
  result = subprocess.run([sys.executable, "-c", _TENSORFLOW_PROBE],
                          env=env, capture_output=True, text=True, check=False)
  if result.returncode != 0:
    raise RuntimeError(
        "tf_interleave compiles against the installed TensorFlow, but "
        f"{sys.executable} could not import it. Install TensorFlow first "
        "(e.g. `pip install tensorflow-cpu==2.21.0`).\n" + result.stderr[-2000:])
  return json.loads(result.stdout.strip().splitlines()[-1])


def sanitizer_flags() -> list:
  mode = os.environ.get("TF_INTERLEAVE_SANITIZE", "")
  if not mode:
    return []
  if mode != "address":
    raise RuntimeError(
        f"TF_INTERLEAVE_SANITIZE must be 'address' or unset, got {mode!r}.")
  # NDEBUG_SANITIZER keeps Abseil's container layout the one TensorFlow's
  # prebuilt code expects; GCC cannot fold Abseil's constexpr checks with the
  # null-pointer checks on (see scripts/asan_tests.sh). Line tables (-g1) give
  # the reports their file:line and build a quarter faster than full -g.
  return ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g1",
          "-DNDEBUG_SANITIZER",
          "-fno-sanitize=null,nonnull-attribute,returns-nonnull-attribute"]


class BuildOpLibrary(build_ext):
  """Compiles the op library with g++ and TensorFlow's flags."""

  def get_ext_filename(self, fullname: str) -> str:
    # A fixed name, the same one Bazel produces.
    return os.path.join(*fullname.split(".")[:-1], LIBRARY_NAME)

  def build_extension(self, ext: Extension) -> None:
    lists = read_source_lists()
    tensorflow = probe_tensorflow()
    compiler = os.environ.get("CXX", "g++")
    sanitize = sanitizer_flags()
    compile_flags = (tensorflow["compile_flags"] + lists["OP_LIBRARY_COPTS"] +
                     sanitize + [
                         f"-I{ROOT}",
                         f'-DTF_INTERLEAVE_TF_VERSION="{tensorflow["version"]}"',
                     ])
    link_flags = tensorflow["link_flags"] + sanitize
    fingerprint = hashlib.sha256(
        json.dumps([compiler, compile_flags]).encode()).hexdigest()[:12]
    object_dir = pathlib.Path(self.build_temp) / f"objects-{fingerprint}"
    object_dir.mkdir(parents=True, exist_ok=True)
    headers_mtime = max(
        (ROOT / header).stat().st_mtime for header in lists["OP_LIBRARY_HDRS"])

    def compile_one(source: str) -> str:
      target = object_dir / (source.replace("/", "_") + ".o")
      source_path = ROOT / source
      if (target.exists() and target.stat().st_mtime >
          max(source_path.stat().st_mtime, headers_mtime)):
        return str(target)
      command = [compiler, "-c", str(source_path), "-o", str(target)
                ] + compile_flags
      print(" ".join(command), flush=True)
      subprocess.run(command, check=True)
      return str(target)

    jobs = int(os.environ.get("TF_INTERLEAVE_JOBS", os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
      objects = list(pool.map(compile_one, lists["OP_LIBRARY_SRCS"]))
    output = pathlib.Path(self.get_ext_fullpath(ext.name))
    output.parent.mkdir(parents=True, exist_ok=True)
    command = [compiler, "-shared", "-o", str(output)] + objects + link_flags
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True)


class PlatformWheel(bdist_wheel):
  """Tags the wheel for its platform only, not for one Python release.

  The op library links against TensorFlow, never against Python's C API, so
  the same wheel serves every Python that the TensorFlow release supports;
  which TensorFlow it fits is checked when the package is imported.
  """

  def get_tag(self) -> tuple:
    _, _, platform = super().get_tag()
    return "py3", "none", platform


setup(
    # The sources are compiled by BuildOpLibrary from cc/sources.bzl; the
    # sdist carries them through MANIFEST.in.
    ext_modules=[Extension("tf_interleave._tf_interleave_ops", sources=[])],
    cmdclass={"build_ext": BuildOpLibrary, "bdist_wheel": PlatformWheel},
)
