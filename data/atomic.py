"""Files and directories that appear whole or not at all: written under a temporary name beside the target, then
renamed.

Every writer of a directory others read goes through here: the built-in corpus cache, `data.prepare`,
MovieLens and the SavedModel export. A failed or killed writer leaves the target as it was (absent, or the
previous version) and at most a hidden `.<name>.staging-*` directory, never a half-written target. The trainer's
JSON and text files (config.json, run_summary.json, metrics.json, ...) go through write_file_atomically: a reader
sees the old file or the new one, whole, never half of one.
"""

import contextlib
import json
import os
import shutil
import tempfile
from typing import Any, Callable, Iterator

Writer = Callable[[str], None]  # writes the directory's contents into the staging directory it is given


@contextlib.contextmanager
def _staging_directory(parent: str, prefix: str) -> Iterator[str]:
    """An empty directory in parent, with the permissions the umask gives (mkdtemp's 0700 would make what is
    published private to its writer); removed on exit unless it was renamed away."""
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=prefix, dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_atomically(output_dir: str, write: Writer, overwrite: bool = False) -> None:
    """Calls write(staging_dir) and renames the staging directory to output_dir only when it returns.

    Raises FileExistsError when output_dir exists (or appeared meanwhile) and overwrite is False; with
    overwrite, the previous output_dir is replaced only once the new one is complete.
    """
    output_dir = os.path.abspath(output_dir)
    if os.path.exists(output_dir) and not overwrite:
        raise FileExistsError(f"{output_dir} exists; choose a new output directory or overwrite it")
    with _staging_directory(os.path.dirname(output_dir), f".{os.path.basename(output_dir)}.staging-") as staging:
        write(staging)
        if not os.path.exists(output_dir):
            os.rename(staging, output_dir)
            return
        if not overwrite:
            raise FileExistsError(f"{output_dir} appeared while it was being written; overwrite it to replace it")
        previous = staging + ".previous"
        os.rename(output_dir, previous)
        os.rename(staging, output_dir)
        shutil.rmtree(previous, ignore_errors=True)


def write_new_version(parent: str, write: Writer) -> str:
    """Calls write(staging_dir) and renames it to parent/<n>, n the next free integer; returns that path.

    Older versions are never touched: os.rename fails rather than replace a version written meanwhile, and the
    next number is tried.
    """
    with _staging_directory(parent, ".staging-") as staging:
        write(staging)
        while True:
            target = os.path.join(parent, str(next_version(parent)))
            try:
                os.rename(staging, target)
                return target
            except OSError:
                if not os.path.exists(target):
                    raise


def next_version(parent: str) -> int:
    """1 + the highest integer-named entry of parent (1 when there is none)."""
    return max((int(name) for name in os.listdir(parent) if name.isdigit()), default=0) + 1


def write_file_atomically(path: str, text: str) -> None:
    """text to path through a temporary file and a rename: readers see the old file or the new one, whole."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w") as file:
        file.write(text)
    os.replace(temporary, path)


def write_json_atomically(path: str, value: Any) -> None:
    """value as JSON (indented by 2) to path, through write_file_atomically."""
    write_file_atomically(path, json.dumps(value, indent=2))
