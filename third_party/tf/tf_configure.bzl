"""Repository rule `tf_configure`: the locally installed TensorFlow as @local_config_tf.

It runs Python (`$PYTHON_BIN_PATH`, default `python3`) with find_tf.py to ask
`tf.sysconfig` where the headers and libtensorflow_framework are, which compile
and link flags a custom op needs, and which TensorFlow version this is. It then
generates a repository with

  :tf_header_lib            cc_library of the headers (include/ is a symlink)
  :libtensorflow_framework  cc_library of libtensorflow_framework.so.N (symlink)
  :tf_config.bzl            TF_VERSION, TF_COPTS, TF_LINKOPTS, TF_INCLUDE_DIR,
                            TF_LIB_DIR, PYTHON_BIN

Nothing is downloaded. After changing the TensorFlow installation run
`bazel sync --configure` (or change PYTHON_BIN_PATH) to regenerate it.
"""

_PYTHON_BIN_PATH = "PYTHON_BIN_PATH"

# Characters allowed in a version string (it becomes a C string literal).
_VERSION_CHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.+-_"

def _python_bin(ctx):
    python = ctx.os.environ.get(_PYTHON_BIN_PATH, "").strip() or "python3"
    if "/" not in python:
        found = ctx.which(python)
        if found == None:
            fail("tf_configure: '%s' is not on PATH; set %s to a Python " % (python, _PYTHON_BIN_PATH) +
                 "interpreter that has TensorFlow installed.")
        return str(found)
    if not ctx.path(python).exists:
        fail("tf_configure: %s=%s does not exist." % (_PYTHON_BIN_PATH, python))
    return python

def _probe(ctx, python):
    script = ctx.path(Label("//third_party/tf:find_tf.py"))
    result = ctx.execute(
        [python, str(script)],
        environment = {"TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout = 300,
        quiet = True,
    )
    if result.return_code != 0:
        fail(("tf_configure: '%s %s' failed (exit %d); is TensorFlow installed " +
              "for that Python? Set %s to choose another interpreter.\n%s\n%s") %
             (python, script, result.return_code, _PYTHON_BIN_PATH, result.stdout, result.stderr))
    out = result.stdout
    begin = out.find("TF_CONFIG_BEGIN\n")
    end = out.find("TF_CONFIG_END")
    if begin < 0 or end < begin:
        fail("tf_configure: unexpected output from %s:\n%s" % (script, out))
    config = {"cflag": [], "lflag": []}
    for line in out[begin + len("TF_CONFIG_BEGIN\n"):end].splitlines():
        if "=" not in line:
            continue
        key, value = line.split("=", 1)
        if key in ("cflag", "lflag"):
            config[key].append(value)
        else:
            config[key] = value
    for key in ("version", "include_dir", "lib_dir", "framework_lib"):
        if not config.get(key):
            fail("tf_configure: %s did not report '%s':\n%s" % (script, key, out))
    for c in config["version"].elems():
        if c not in _VERSION_CHARS:
            fail("tf_configure: unexpected TensorFlow version %r" % config["version"])
    return config

def _tf_configure_impl(ctx):
    python = _python_bin(ctx)
    config = _probe(ctx, python)

    ctx.symlink(config["include_dir"], "include")
    framework_lib = config["framework_lib"]
    ctx.symlink(config["lib_dir"] + "/" + framework_lib, framework_lib)

    ctx.template(
        "BUILD.bazel",
        Label("//third_party/tf:BUILD.tpl"),
        {
            "%{framework_lib}": framework_lib,
            "%{python_bin}": python,
        },
        executable = False,
    )
    ctx.file(
        "tf_config.bzl",
        "\n".join([
            '"""TensorFlow found by tf_configure (generated; do not edit)."""',
            "",
            "TF_VERSION = %s" % repr(config["version"]),
            "TF_COPTS = %s" % repr(config["cflag"]),
            "TF_LINKOPTS = %s" % repr(config["lflag"]),
            "TF_INCLUDE_DIR = %s" % repr(config["include_dir"]),
            "TF_LIB_DIR = %s" % repr(config["lib_dir"]),
            "TF_FRAMEWORK_LIB = %s" % repr(framework_lib),
            "PYTHON_BIN = %s" % repr(python),
            "",
        ]),
        executable = False,
    )
    ctx.file("WORKSPACE", 'workspace(name = "%s")\n' % ctx.name, executable = False)

tf_configure = repository_rule(
    implementation = _tf_configure_impl,
    environ = [_PYTHON_BIN_PATH],
    configure = True,
    doc = "Exposes the installed TensorFlow (headers, framework library, flags, version).",
)
