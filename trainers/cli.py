"""How every command of the project starts and fails: absl's app.run, with usage errors as one line, and
commands stopped by a signal while they wait as one line too."""

import contextlib
import os
import signal
import sys
from typing import Callable

from absl import app


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


def run(main) -> None:
    """app.run(main), except that an app.UsageError raised in main prints one line (and a hint to --helpfull)
    instead of absl's page of flag help above it, exit code 1 like absl's; and Stopped prints its line, exit code
    128 + the signal's number."""

    def main_with_one_line_errors(argv):
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
