"""How every command of the project starts, talks and fails: absl's app.run, with usage errors as one line, and
commands stopped by a signal while they wait as one line too; TensorFlow's C++ log quiet unless asked for, and
the command's own log lines plain (no absl prefix), each once.

Output at the default --verbosity: the command's own lines only. --verbosity=1 (absl's debug) or more: every
TensorFlow and absl record, in their own formats. A TF_CPP_MIN_LOG_LEVEL of the user's own is always kept.
"""

import contextlib
import ctypes
import logging
import os
import re
import shutil
import signal
import sys
import time
from typing import Callable, Mapping, Optional, Sequence

from absl import app
from absl import logging as absl_logging

# TF_CPP_MIN_LOG_LEVEL when the user set none. We differ from TensorFlow (0, everything): at 0, 1 or 2 a healthy
# CPU run prints CUDA probing, oneDNN and CPU-feature notices, "Local rendezvous is aborting" and an E-level
# "failed call to cuInit" line; 3 keeps FATAL only. A failure that stops a run reaches the user as a Python error.
QUIET_TF_CPP_LOG_LEVEL = "3"
VERBOSE_TF_CPP_LOG_LEVEL = "0"
# absl's --verbosity from which a command shows everything: 1, absl's debug.
VERBOSE = 1
# Back to the start of the terminal's line and erase it (ANSI): a progress line is redrawn in place.
CLEAR_LINE = "\r\x1b[K"


class Stopped(Exception):
    """A command stopped by a signal (stop_on_signals). run() prints the message as one line and exits with
    128 + the signal's number, as a shell reports a process the signal killed."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals(describe: Callable[[str], str]):
    """Within the block, SIGTERM and SIGINT raise Stopped(describe(signal name)) in the main thread.

    Python runs a signal handler only between bytecodes of the main thread, so the block must wait in Python
    (time.sleep, select, socket calls), not inside a TensorFlow call that holds the interpreter. The previous
    handlers come back after the block.
    """

    def handler(signum, frame):
        raise Stopped(describe(signal.Signals(signum).name), signum)

    previous = {number: signal.signal(number, handler) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for number, old in previous.items():
            if old is not None:  # None: a handler installed outside Python, which cannot be put back
                signal.signal(number, old)


def verbosity_ahead_of_absl(argv: Sequence[str]) -> int:
    """--verbosity (-v) as app.run will parse it from argv (--flagfile included); -1, absl's default, when it is
    absent or no integer (app.run reports that). Read ahead of absl because TensorFlow reads its C++ log level
    once, when first imported, and a command's imports take TensorFlow in before app.run parses the flags."""
    from absl import flags

    ahead = flags.FlagValues()
    flags.DEFINE_integer("verbosity", -1, "", short_name="v", flag_values=ahead)
    try:
        ahead(list(argv), known_only=True)
    except flags.Error:
        return -1
    return ahead.verbosity


def tensorflow_cpp_log_level(argv: Sequence[str], environ: Mapping[str, str]) -> Optional[str]:
    """The TF_CPP_MIN_LOG_LEVEL a command sets: None when the user set one (theirs stands), else everything (0)
    from --verbosity=1 up and FATAL only (3) below."""
    if "TF_CPP_MIN_LOG_LEVEL" in environ:
        return None
    return VERBOSE_TF_CPP_LOG_LEVEL if verbosity_ahead_of_absl(argv) >= VERBOSE else QUIET_TF_CPP_LOG_LEVEL


def quiet_tensorflow_for_commands() -> None:
    """Sets TF_CPP_MIN_LOG_LEVEL for `python -m <package>.<command>` before TensorFlow is imported; nothing when
    other code imports the package (a test, a notebook, a script decide their own output), or too late.

    The packages' __init__ call this: while Python locates the module of -m it imports the module's package
    with sys.argv[0] set to "-m". Worker processes a command starts inherit the level it set.
    """
    if sys.argv[:1] != ["-m"] or "tensorflow" in sys.modules:
        return
    level = tensorflow_cpp_log_level(sys.argv, os.environ)
    if level is not None:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = level


class PlainFormatter(logging.Formatter):
    """A command's log lines as a person reads them: an INFO record is its message alone, a warning or error
    "warning: <message>". We differ from absl's format ("I1203 15:44:37.435321 140021026061184 train.py:48] ..."),
    which is for log files and greps: --verbosity=1 brings it back. On a terminal each line first erases a
    ProgressLine drawn there, so the two do not run into one line."""

    def __init__(self, on_terminal: bool = False):
        super().__init__()
        self.start = CLEAR_LINE if on_terminal else ""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return self.start + (message if record.levelno <= logging.INFO else f"{record.levelname.lower()}: {message}")


class ProgressLine:
    """One status line redrawn in place on a terminal, 'epoch 1/3  400/957 [========>           ]  loss 5.8648
    12.3 steps/s  ETA 45s', cut to the terminal's width (a wider line wraps, and each redraw would leave a line
    behind, as Keras' bar of every metric did)."""

    BAR_WIDTH = 20

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.epoch, self.epochs, self.steps, self.started = 0, 0, 0, 0.0

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        self.epoch, self.epochs, self.steps, self.started = epoch, epochs, steps, time.monotonic()

    def draw(self, done: int, loss: Optional[float]) -> None:
        rate = done / max(time.monotonic() - self.started, 1e-9)
        filled = self.BAR_WIDTH * done // max(self.steps, 1)
        bar = "=" * filled + (">" if filled < self.BAR_WIDTH else "") + " " * (self.BAR_WIDTH - filled - 1)
        parts = [f"epoch {self.epoch}/{self.epochs}", f"{done}/{self.steps} [{bar}]"]
        parts += [f"loss {loss:.4f}"] if loss is not None else []
        parts += [f"{rate:.1f} steps/s", f"ETA {(self.steps - done) / rate:.0f}s"]
        width = shutil.get_terminal_size().columns - 1
        self.stream.write(CLEAR_LINE + "  ".join(parts)[:width])
        self.stream.flush()

    def clear(self) -> None:
        self.stream.write(CLEAR_LINE)
        self.stream.flush()


def show_plain_lines() -> None:
    """After app.run parsed --verbosity (and put absl's handler on the root logger): each record once, plainly,
    unless --verbosity=1 or more asks for every TensorFlow record in absl's format."""
    tensorflow_logger = logging.getLogger("tensorflow")
    # TensorFlow gives its logger a stderr handler of its own when it is imported while the root logger has none,
    # as a command's imports do; absl's handler on the root printed each record again: every warning twice.
    for handler in list(tensorflow_logger.handlers):
        tensorflow_logger.removeHandler(handler)
    if absl_logging.get_verbosity() >= VERBOSE:
        tensorflow_logger.setLevel(logging.NOTSET)  # its INFO records too (trainers/__init__ keeps warnings only)
        return
    absl_logging.get_absl_handler().setFormatter(PlainFormatter(on_terminal=sys.stderr.isatty()))


def absl_cpp_log_level_as_tensorflows() -> None:
    """Gives absl's C++ log TF_CPP_MIN_LOG_LEVEL's threshold (both number severities 0 INFO .. 3 FATAL). We differ
    from TensorFlow 2.20, which leaves it at INFO whatever TF_CPP_MIN_LOG_LEVEL says: the gRPC servers of
    distributed runs log through it ("I0000 ... grpc_server_lib.cc:466] Started server ...", after absl's
    "WARNING: All log messages before absl::InitializeLog() ..."). Call it after TensorFlow's import and before
    a server starts; a no-op when TensorFlow is not imported or its library does not export the setter."""
    level = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0")
    set_min_log_level = _absl_set_min_log_level() if "tensorflow" in sys.modules and level.isdigit() else None
    if set_min_log_level is not None:
        set_min_log_level(ctypes.c_int(min(int(level), 3)))


def _absl_set_min_log_level():
    """absl::SetMinLogLevel in TensorFlow's framework library, or None. Its C++ name holds absl's inline
    namespace (lts_<date>), which the headers TensorFlow ships name."""
    tensorflow_dir = os.path.dirname(sys.modules["tensorflow"].__file__)
    try:
        with open(os.path.join(tensorflow_dir, "include", "absl", "base", "options.h")) as file:
            namespace = re.search(r"#define ABSL_OPTION_INLINE_NAMESPACE_NAME (\w+)", file.read()).group(1)
        library = ctypes.CDLL(os.path.join(tensorflow_dir, "libtensorflow_framework.so.2"))
        return getattr(library, f"_ZN4absl{len(namespace)}{namespace}14SetMinLogLevelENS0_18LogSeverityAtLeastE")
    except (OSError, AttributeError):  # no such file, library or symbol (another platform or TensorFlow)
        return None


def run(main) -> None:
    """app.run(main), except that an app.UsageError raised in main prints one line (and a hint to --helpfull)
    instead of absl's page of flag help above it, exit code 1 like absl's; and Stopped prints its line, exit code
    128 + the signal's number. Log records print as show_plain_lines says."""

    def main_with_one_line_errors(argv):
        show_plain_lines()
        absl_cpp_log_level_as_tensorflows()
        program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] != "-m" else "error"
        try:
            return main(argv)
        except app.UsageError as error:
            sys.exit(f"{program}: error: {error}  (--helpfull lists every flag)")
        except Stopped as stopped:
            print(f"{program}: {stopped}", file=sys.stderr, flush=True)
            sys.exit(128 + stopped.signum)

    app.run(main_with_one_line_errors)


def check_arguments(argv, *required_flags: str) -> None:
    """UsageError for positional arguments (absl takes only flags) or a required flag left unset."""
    from absl import flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    missing = [name for name in required_flags if flags.FLAGS[name].value in (None, "")]
    if missing:
        raise app.UsageError(f"--{' and --'.join(missing)} {'is' if len(missing) == 1 else 'are'} required")
