"""Checks of what the Python packaging ships (sdist contents, wheel tag).

`pip install .` from a checkout sees every file; an install from an sdist sees
only what MANIFEST.in puts into it, and it compiles the op, so every C++
source, header and build list must be there.
"""

import importlib.metadata
import pathlib
import shutil
import subprocess
import sys
import tarfile

from pipelines import source_lists

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Build outputs and caches that a checkout may hold but an sdist never needs.
_NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", "build", "dist",
                                      "*.egg-info", "bazel-*", "__pycache__",
                                      ".pytest_cache", ".hypothesis", "*.so",
                                      "*.o")



def _sdist_members(tmp_path: pathlib.Path) -> set:
  tree = tmp_path / "tree"
  shutil.copytree(ROOT, tree, ignore=_NOT_SOURCES)
  subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d",
                  str(tmp_path / "dist")], cwd=tree, check=True,
                 capture_output=True)
  (archive,) = (tmp_path / "dist").glob("tf_interleave-*.tar.gz")
  with tarfile.open(archive) as sdist:
    # Strip the `tf_interleave-<version>/` prefix.
    return {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}


def test_sdist_holds_everything_the_build_reads(tmp_path):
  members = _sdist_members(tmp_path)
  lists = source_lists()
  needed = (["setup.py", "pyproject.toml", "LICENSE", "README.md",
             "cc/sources.bzl", "BUILD", "WORKSPACE"] +
            list(lists["OP_LIBRARY_SRCS"]) + list(lists["OP_LIBRARY_HDRS"]))
  missing = sorted(set(needed) - members)
  assert not missing, f"the sdist lacks {missing}"
  assert any(name.startswith("third_party/tf/") for name in members)
  assert not [name for name in members if name.endswith((".so", ".o"))]


def test_installed_wheel_is_tagged_for_any_python():
  # The op library does not use Python's C API, so the wheel is not tied to
  # one CPython release.
  wheel = importlib.metadata.distribution("tf_interleave").read_text("WHEEL")
  tags = [line.split(":", 1)[1].strip() for line in wheel.splitlines()
          if line.startswith("Tag:")]
  assert tags and all(tag.startswith("py3-none-") for tag in tags), tags


def test_version_is_the_package_metadata_version():
  import tf_interleave  # pylint: disable=g-import-not-at-top
  assert (importlib.metadata.version("tf_interleave") ==
          tf_interleave.__version__)
