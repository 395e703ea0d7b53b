"""A quiet start for the command-line binaries: TensorFlow's C++ start-up lines hidden unless asked for.

Importing TensorFlow prints, straight to file descriptor 2 and before its logging is set up (so
`TF_CPP_MIN_LOG_LEVEL` cannot hide them), absl's "All log messages before absl::InitializeLog()"
notice, the oneDNN notice and the CUDA-stub line, and then all three again: `import tensorflow`
loads the profiler plugin extension (`_pywrap_profiler_plugin`, through
`tf.profiler.experimental.client`), which carries its own copy of TensorFlow's platform code,
whose start-up runs a second time. The first op then logs the CPU feature guard and, on a
machine without a GPU, a failed `cuInit`, both of which `TF_CPP_MIN_LOG_LEVEL=3` hides.

Each binary (`resnet/train.py`, `resnet/evaluate.py`, `resnet/export/__main__.py`) calls
`quiet_binary_start()` on its first line. The packages imported before that line import nothing
heavy then: `resnet.export` imports nothing, and `resnet` imports its public names eagerly only
when the process is not one of our binaries (`launched_as_binary`), otherwise where they are
first used. `quiet_binary_start` acts only in a process that is one of our
binaries (`resnet-train`, `resnet-eval`, `resnet-export`, or `python -m resnet.train` and the
like) run without absl's `--verbosity` / `-v` flag; a binary's module imported as a library, or
a binary run with that flag, leaves TensorFlow to start as it always does. Importing the library
(`import resnet`, or any of its modules) changes neither `os.environ` nor descriptor 2.
"""

from __future__ import annotations

import os
import sys

from resnet._stderr import captured_stderr

BINARIES = {
    "resnet-train": "train",
    "resnet-eval": "evaluate",
    "resnet-export": "export",
    "resnet-prepare": "prepare",
    "resnet-data-service": "data_service",
    "resnet-predict": "predict",
}
"""Our binaries: console script name -> module under `resnet`."""


def launched_as_binary(argv: list[str], orig_argv: list[str]) -> bool:
    """Whether this process is one of our binaries (a console script, or `python -m resnet.train`
    and the like).

    Args:
        argv: `sys.argv` (a console script's own path first).
        orig_argv: `sys.orig_argv` (the interpreter's arguments, `-m resnet.train` for a module run).
    """
    script = os.path.basename(argv[0]) if argv else ""
    modules = {f"resnet.{module}" for module in BINARIES.values()}
    return script in BINARIES or any(
        flag == "-m" and module in modules for flag, module in zip(orig_argv, orig_argv[1:], strict=False)
    )


def is_quiet_binary(argv: list[str], orig_argv: list[str]) -> bool:
    """Whether this process is one of our binaries started without a verbosity flag (`-v`, `--verbosity`)."""
    verbose = any(arg in ("-v", "--v") or arg.startswith(("--verbosity", "-v=", "--v=")) for arg in argv[1:])
    return launched_as_binary(argv, orig_argv) and not verbose


def quiet_binary_start() -> None:
    """In a quiet binary (`is_quiet_binary`): hides TensorFlow's C++ INFO to ERROR logs (unless
    `TF_CPP_MIN_LOG_LEVEL` is set) and imports TensorFlow with descriptor 2 captured, showing
    what it wrote only if the import fails."""
    if "tensorflow" in sys.modules or not is_quiet_binary(sys.argv, getattr(sys, "orig_argv", [])):
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with captured_stderr():  # written back only if the import fails
        import tensorflow  # noqa: F401  (imported here, with its start-up lines captured)
