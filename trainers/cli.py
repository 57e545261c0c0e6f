"""How every command of the project starts and fails: absl's app.run, with usage errors as one line."""

import os
import sys

from absl import app


def run(main) -> None:
    """app.run(main), except that an app.UsageError raised in main prints one line (and a hint to --helpfull)
    instead of absl's page of flag help above it; exit code 1, like absl's."""

    def main_with_one_line_errors(argv):
        try:
            return main(argv)
        except app.UsageError as error:
            program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] != "-m" else "error"
            sys.exit(f"{program}: error: {error}  (--helpfull lists every flag)")

    app.run(main_with_one_line_errors)


def check_arguments(argv, *required_flags: str) -> None:
    """UsageError for positional arguments (absl takes only flags) or a required flag left unset."""
    from absl import flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    missing = [name for name in required_flags if flags.FLAGS[name].value in (None, "")]
    if missing:
        raise app.UsageError(f"--{' and --'.join(missing)} {'is' if len(missing) == 1 else 'are'} required")
