"""Checks of the Bazel build (BUILD, WORKSPACE, .bazelrc, third_party/tf).

Every test here runs in every configuration; none needs Bazel itself:

* The Bazel files are evaluated as data: the top-level BUILD is Starlark that is
  also valid Python, so it is executed with stand-ins for `load`, `cc_binary`
  and friends, and what it declares is compared with `cc/sources.bzl` (the one
  list that setup.py compiles too) and with the installed TensorFlow's flags.
* CI builds the library with `scripts/bazel_build.sh` and runs part of the suite
  with TF_INTERLEAVE_OPS_LIBRARY=<the Bazel-built .so>. Then
  `test_loaded_library_is_the_requested_build` checks that tf_interleave
  really loaded that file (and the tests run with it exercise it); without the
  variable it checks that the packaged library was loaded instead.
"""

import os
import pathlib
import re
import shlex
import subprocess
import sys
import tokenize

import pytest
import tensorflow as tf
from pipelines import source_lists

ROOT = pathlib.Path(__file__).resolve().parents[1]
LIBRARY_PATH_ENV = "TF_INTERLEAVE_OPS_LIBRARY"
OP_LIBRARY_TARGET = "tf_interleave/_tf_interleave_ops.so"



class _Package:
  """Runs a BUILD file as Python, recording the rules it declares."""

  def __init__(self, path, loadable, package_dir):
    self.rules = {}
    self.exports = []
    self.loads = {}
    self._loadable = loadable
    self._dir = package_dir
    namespace = {
        "load": self._load,
        "package": lambda **kwargs: None,
        "glob": self._glob,
        "fail": self._fail,
        "exports_files": self._exports_files,
    }
    for kind in ("cc_binary", "cc_library", "cc_import", "cc_test",
                 "py_library", "py_binary", "py_test", "filegroup",
                 "genrule"):
      namespace[kind] = self._rule(kind)
    self.namespace = namespace
    exec(compile(path.read_text(), str(path), "exec"), namespace)

  def _load(self, label, *names, **aliases):
    assert label in self._loadable, f"unexpected load of {label}"
    self.loads[label] = set(names) | set(aliases.values())
    values = self._loadable[label]
    for name in names:
      self.namespace[name] = values[name]
    for alias, name in aliases.items():
      self.namespace[alias] = values[name]

  def _glob(self, include, exclude=(), allow_empty=True):
    found = set()
    for pattern in include:
      found.update(
          str(p.relative_to(self._dir)) for p in self._dir.glob(pattern)
          if p.is_file())
    for pattern in exclude:
      found.difference_update(
          str(p.relative_to(self._dir)) for p in self._dir.glob(pattern))
    return sorted(found)

  @staticmethod
  def _fail(message):
    raise AssertionError(f"BUILD called fail(): {message}")

  def _exports_files(self, files, visibility=None):
    del visibility
    self.exports.extend(files)

  def _rule(self, kind):

    def declare(name, **attrs):
      assert name not in self.rules, f"duplicate target {name}"
      self.rules[name] = dict(attrs, kind=kind)

    return declare


@pytest.fixture(scope="module")
def sources():
  return source_lists()


@pytest.fixture(scope="module")
def tf_probe():
  """What third_party/tf/find_tf.py (run by the repository rule) reports."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run(
      [sys.executable, str(ROOT / "third_party" / "tf" / "find_tf.py")],
      env=env, capture_output=True, text=True, check=False, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert "TF_CONFIG_BEGIN\n" in out and "TF_CONFIG_END" in out, out
  body = out.split("TF_CONFIG_BEGIN\n", 1)[1].split("TF_CONFIG_END", 1)[0]
  config = {"cflag": [], "lflag": []}
  for line in body.splitlines():
    key, value = line.split("=", 1)
    if key in ("cflag", "lflag"):
      config[key].append(value)
    else:
      config[key] = value
  return config


@pytest.fixture(scope="module")
def top_package(sources, tf_probe):
  tf_config = {"TF_VERSION": tf_probe["version"], "TF_COPTS": tf_probe["cflag"]}
  return _Package(ROOT / "BUILD", {
      "//cc:sources.bzl": sources,
      "@local_config_tf//:tf_config.bzl": tf_config,
  }, ROOT)


def _label_to_path(label):
  """'//cc:kernels/x.cc' -> 'cc/kernels/x.cc'; '//:a/b' or ':a/b' -> 'a/b'."""
  match = re.fullmatch(r"(?://([^:]*))?:(.+)", label)
  assert match, f"not a label of this repository: {label}"
  package, name = match.groups()
  return f"{package}/{name}" if package else name


def test_build_takes_sources_and_copts_from_sources_bzl(top_package, sources):
  loaded = top_package.loads.get("//cc:sources.bzl", set())
  assert {"OP_LIBRARY_SRCS", "OP_LIBRARY_HDRS", "OP_LIBRARY_COPTS"} <= loaded
  library = top_package.rules[OP_LIBRARY_TARGET]
  assert library["kind"] == "cc_binary"
  assert library["linkshared"] == 1
  # Exactly the files of sources.bzl, in order, nothing more.
  assert [_label_to_path(label) for label in library["srcs"]] == (
      sources["OP_LIBRARY_SRCS"] + sources["OP_LIBRARY_HDRS"])
  copts = library["copts"]
  start = copts.index(sources["OP_LIBRARY_COPTS"][0])
  assert copts[start:start + len(sources["OP_LIBRARY_COPTS"])] == (
      sources["OP_LIBRARY_COPTS"])
  deps = set(library["deps"])
  assert {"@local_config_tf//:tf_header_lib",
          "@local_config_tf//:libtensorflow_framework"} <= deps


def test_build_names_no_source_file_itself():
  with open(ROOT / "BUILD", "rb") as build:
    strings = [token.string for token in tokenize.tokenize(build.readline)
               if token.type == tokenize.STRING]  # Comments are not tokens.
  literals = [literal for literal in strings if re.search(
      r"\.(cc|cpp|cxx|c|h|hpp|hh)[\"']$", literal)]
  assert not literals, (
      f"BUILD lists sources {literals}; they belong in cc/sources.bzl only")


def test_every_included_project_header_is_listed(sources):
  """Bazel compiles in a sandbox holding only the listed files, so a header
  that a source includes but OP_LIBRARY_HDRS omits breaks the Bazel build
  (setup.py, reading the tree, would not notice)."""
  listed = set(sources["OP_LIBRARY_HDRS"])
  for path in sources["OP_LIBRARY_SRCS"] + sources["OP_LIBRARY_HDRS"]:
    text = (ROOT / path).read_text()
    for header in re.findall(r'^\s*#\s*include\s+"(cc/[^"]+)"', text, re.M):
      assert header in listed, (
          f"{path} includes {header}, which cc/sources.bzl's OP_LIBRARY_HDRS "
          "does not list")


def test_version_define_matches_setup_py(top_package, tf_probe):
  # setup.py passes the argv word -DTF_INTERLEAVE_TF_VERSION="<version>";
  # Bazel shell-tokenizes copts, as shlex does.
  copts = top_package.rules[OP_LIBRARY_TARGET]["copts"]
  words = [word for copt in copts for word in shlex.split(copt)]
  expected = f'-DTF_INTERLEAVE_TF_VERSION="{tf.version.VERSION}"'
  assert expected in words
  assert tf_probe["version"] == tf.version.VERSION


def test_cc_package_exports_every_source(sources):
  package = _Package(ROOT / "cc" / "BUILD.bazel", {}, ROOT / "cc")
  exported = set(package.exports)
  for path in (sources["OP_LIBRARY_SRCS"] + sources["OP_LIBRARY_HDRS"] +
               sources["CPP_TEST_SRCS"] + sources["CPP_TF_TEST_SRCS"]):
    assert path.startswith("cc/"), path
    assert (ROOT / path).is_file(), f"{path} is listed but does not exist"
    assert path[len("cc/"):] in exported, f"cc/BUILD.bazel does not export {path}"


def test_python_package_target(top_package):
  package = top_package.rules["tf_interleave"]
  assert package["kind"] == "py_library"
  assert "tf_interleave/__init__.py" in package["srcs"]
  assert ":" + OP_LIBRARY_TARGET in package["data"]


def test_bazelrc_has_tensorflow_compile_flags():
  """.bazelrc carries tf.sysconfig's flags (a TF upgrade that changes them
  must update .bazelrc too)."""
  flags = set()
  for line in (ROOT / ".bazelrc").read_text().splitlines():
    words = line.split("#", 1)[0].split()
    if words and words[0] == "build":
      for word in words[1:]:
        for option in ("--copt=", "--cxxopt="):
          if word.startswith(option):
            flags.add(word[len(option):])
  for flag in tf.sysconfig.get_compile_flags():
    if flag.startswith("-I"):
      continue  # Comes from @local_config_tf//:tf_header_lib.
    normalized = flag[1:] if flag.startswith("--std=") else flag
    assert normalized in flags, f"{flag} is missing from .bazelrc"


def test_repository_rule_probe_finds_installed_tensorflow(tf_probe):
  include = pathlib.Path(tf_probe["include_dir"])
  assert (include / "tensorflow" / "core" / "framework" / "op.h").is_file()
  assert include.samefile(tf.sysconfig.get_include())
  lib_dir = pathlib.Path(tf_probe["lib_dir"])
  assert lib_dir.samefile(tf.sysconfig.get_lib())
  assert (lib_dir / tf_probe["framework_lib"]).is_file()
  assert tf_probe["framework_lib"].startswith("libtensorflow_framework.so")
  assert tf_probe["cflag"] == [
      f for f in tf.sysconfig.get_compile_flags() if not f.startswith("-I")]
  assert tf_probe["lflag"] == tf.sysconfig.get_link_flags()


def test_workspace_is_offline():
  assert (ROOT / ".bazelversion").read_text().strip() == "4.2.3"
  workspace = (ROOT / "WORKSPACE").read_text()
  code = "\n".join(line.split("#", 1)[0] for line in workspace.splitlines())
  for word in ("http_archive", "http_file", "git_repository", "urls",
               "download"):
    assert word not in code, f"WORKSPACE must not download ({word})"
  for path in re.findall(r'path\s*=\s*"([^"]+)"', code):
    assert not path.startswith("/"), f"absolute path {path} in WORKSPACE"
    assert (ROOT / path / "WORKSPACE").is_file(), path


def test_loaded_library_is_the_requested_build():
  """With TF_INTERLEAVE_OPS_LIBRARY (CI sets it to the Bazel-built .so) that
  exact file is loaded; without it, the library packaged next to the code."""
  import tf_interleave  # pylint: disable=import-outside-toplevel
  from tf_interleave import _loader  # pylint: disable=import-outside-toplevel

  loaded = tf_interleave.library_path()
  assert loaded is not None, "importing tf_interleave loaded no op library"
  requested = os.environ.get(LIBRARY_PATH_ENV)
  if requested:
    expected = requested
  else:
    expected = os.path.join(os.path.dirname(tf_interleave.__file__),
                            "_tf_interleave_ops.so")
  assert os.path.samefile(loaded, expected), (loaded, expected)
  assert _loader.built_against(loaded) == tf.version.VERSION
