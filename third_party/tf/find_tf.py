"""Print where the installed TensorFlow keeps what a custom op build needs.

Run by //third_party/tf:tf_configure.bzl with the Python interpreter named by
PYTHON_BIN_PATH. Output is `key=value` lines between two marker lines so that
anything TensorFlow itself prints on stdout while importing is ignored.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402


def framework_library(lib_dir, link_flags):
    """The file name of libtensorflow_framework named by the link flags."""
    for flag in link_flags:
        if flag.startswith("-l:"):
            name = flag[len("-l:"):]
        elif flag.startswith("-l"):
            name = "lib%s.so" % flag[len("-l"):]
        else:
            continue
        if os.path.exists(os.path.join(lib_dir, name)):
            return name
    for name in sorted(os.listdir(lib_dir)):
        if name.startswith("libtensorflow_framework.so"):
            return name
    raise SystemExit("no libtensorflow_framework in %s (link flags %r)"
                     % (lib_dir, link_flags))


def main():
    include_dir = os.path.realpath(tf.sysconfig.get_include())
    lib_dir = os.path.realpath(tf.sysconfig.get_lib())
    compile_flags = tf.sysconfig.get_compile_flags()
    link_flags = tf.sysconfig.get_link_flags()
    lines = [
        "version=" + tf.__version__,
        "include_dir=" + include_dir,
        "lib_dir=" + lib_dir,
        "framework_lib=" + framework_library(lib_dir, link_flags),
    ]
    # The include directory is provided by @local_config_tf//:tf_header_lib.
    lines += ["cflag=" + f for f in compile_flags if not f.startswith("-I")]
    lines += ["lflag=" + f for f in link_flags]
    sys.stdout.write("TF_CONFIG_BEGIN\n%s\nTF_CONFIG_END\n" % "\n".join(lines))


if __name__ == "__main__":
    main()
