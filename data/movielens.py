"""MovieLens 100K through the same `data.prepare` path as one's own logs: `python -m data.movielens`.

The files come from the `recbole==1.2.1` wheel on PyPI, which ships them as RecBole atomic files
(recbole/dataset_example/ml-100k/ml-100k.{inter,item,user}: tab-separated, typed headers such as
`user_id:token`, multi-valued fields joined by spaces). `pip download --no-deps` fetches the wheel (recbole is
never installed: it pulls in PyTorch) and only those three files are extracted into the cache. The data are
GroupLens's, whose licence does not allow redistribution: they stay in the user's cache, never in this repo.

Prepared as: every rating (1 to 5) is an interaction; each user's last rating by timestamp is held out as the
test split (ties by file order) and the one before it as the validation split (the trainer chooses the model on
it); items carry their genres (multi-valued) and release year as features. The prepared directory's name says
the split (PREPARED): a cache prepared before the validation split existed ("prepared-last1") is not read, and
the corpus is prepared again beside it from the cached files.
"""

import os
import subprocess
import sys
import tempfile
import zipfile
from typing import Optional

from data import atomic, corpus, prepare
from data.readers import DataError
from data.schema import Schema

WHEEL = "recbole==1.2.1"
MEMBER_DIR = "recbole/dataset_example/ml-100k/"
FILES = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")

SCHEMA = Schema(
    user_column="user_id:token",
    item_column="item_id:token",
    timestamp_column="timestamp:float",
    item_feature_columns=("class:token_seq", "release_year:token"),
    multi_valued_columns=("class:token_seq",),
    value_separator=" ",
    delimiter="\t",
    quoting=False,  # titles hold quotes ("Pinocchio"): RecBole files are plain tab-separated
)
PREPARED = "prepared-last1-validation1"  # a new split, a new name: see the module docstring
VALIDATION_PER_USER = 1


def directory(cache_dir: str) -> str:
    """MovieLens's folder in the cache root shared with the built-in corpus (data.sources.DEFAULT_CACHE_DIR)."""
    return os.path.join(cache_dir, "movielens")


class DownloadError(RuntimeError):
    """The wheel could not be fetched or does not hold the expected files."""


def download(cache_dir: str) -> str:
    """The directory holding ml-100k.{inter,item,user} in MovieLens's folder cache_dir (see `directory`),
    fetched and extracted on first use."""
    raw_dir = os.path.join(cache_dir, "ml-100k")
    if all(os.path.isfile(os.path.join(raw_dir, name)) for name in FILES):
        return raw_dir
    os.makedirs(cache_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download-") as download_dir:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL, "-d", download_dir]
        result = subprocess.run(command, capture_output=True, text=True)
        wheels = [name for name in os.listdir(download_dir) if name.endswith(".whl")]
        if result.returncode != 0 or not wheels:
            last_line = (result.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise DownloadError(f"`pip download --no-deps {WHEEL}` failed (is PyPI reachable?): {last_line}")

        def write(staging: str) -> None:
            with zipfile.ZipFile(os.path.join(download_dir, wheels[0])) as wheel:
                for name in FILES:
                    try:
                        data = wheel.read(MEMBER_DIR + name)
                    except KeyError:
                        raise DownloadError(f"{wheels[0]} has no {MEMBER_DIR + name}") from None
                    with open(os.path.join(staging, name), "wb") as file:
                        file.write(data)

        atomic.write_atomically(raw_dir, write, overwrite=True)
    return raw_dir


def prepared(cache_dir: str, raw_dir: Optional[str] = None) -> corpus.PreparedCorpus:
    """The prepared MovieLens 100K corpus in its folder cache_dir (see `directory`), downloading and preparing it
    on first use.

    raw_dir: a directory already holding ml-100k.{inter,item} (default: download into cache_dir).
    """
    output_dir = os.path.join(cache_dir, PREPARED)
    if not os.path.isfile(os.path.join(output_dir, "metadata.json")):
        raw_dir = raw_dir or download(cache_dir)
        prepare.prepare(
            os.path.join(raw_dir, "ml-100k.inter"),
            SCHEMA,
            output_dir,
            item_features_input=os.path.join(raw_dir, "ml-100k.item"),
            split="last",
            eval_per_user=1,
            validation_per_user=VALIDATION_PER_USER,
            description="MovieLens 100K (GroupLens, via the recbole==1.2.1 wheel): every rating an interaction, "
            "each user's last rating held out (test), the one before it the validation split; item features "
            "genres and release year",
        )
    return corpus.PreparedCorpus.load(output_dir)


def main(argv):
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        prepared_corpus = prepared(directory(flags.FLAGS.cache_dir))
    except (DownloadError, DataError) as error:
        sys.exit(f"data.movielens: {error}")
    print(
        f"MovieLens 100K prepared in {prepared_corpus.directory}: {prepared_corpus.num_items} items, "
        f"{prepared_corpus.num_users} users, {prepared_corpus.num_train} train / {prepared_corpus.num_validation} validation / "
        f"{prepared_corpus.num_eval} eval "
        f"interactions\ntrain on it: python -m trainers.train --data=movielens"
    )


if __name__ == "__main__":
    from absl import app, flags

    from data import sources

    flags.DEFINE_string(
        "cache_dir", sources.DEFAULT_CACHE_DIR, "Cache root (as trainers.train's): the files go to <cache_dir>/movielens."
    )
    app.run(main)
