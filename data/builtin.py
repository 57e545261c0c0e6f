"""The built-in corpus as a prepared directory, generated once per configuration and cached on disk."""

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile

import numpy as np

from data import corpus, records, synthetic

NUM_SHARDS = 4


def cache_key(config: synthetic.SyntheticConfig) -> str:
    text = json.dumps(dataclasses.asdict(config), sort_keys=True)
    return "synthetic-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def prepare(config: synthetic.SyntheticConfig, cache_dir: str) -> corpus.PreparedCorpus:
    """Returns the cached corpus for this configuration, generating it first if needed.

    The directory appears whole or not at all: it is written under a temporary name and renamed, so an
    interrupted run never leaves a half-written cache that a later run would trust.
    """
    directory = os.path.join(cache_dir, cache_key(config))
    if os.path.isfile(os.path.join(directory, "metadata.json")):
        return corpus.PreparedCorpus.load(directory)
    os.makedirs(cache_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".staging-", dir=cache_dir)
    try:
        generated = synthetic.generate(config)
        for split, interactions in (("train", generated.train), ("eval", generated.eval)):
            records.write_interactions(staging, split, interactions._asdict(), NUM_SHARDS)
        np.save(os.path.join(staging, "item_counts.npy"), generated.item_counts)
        corpus.write_metadata(
            staging,
            num_items=config.num_items,
            num_users=config.num_users,
            num_train=len(generated.train),
            num_eval=len(generated.eval),
            description=f"built-in synthetic corpus {dataclasses.asdict(config)}",
        )
        try:
            os.rename(staging, directory)
        except OSError:
            if not os.path.isfile(os.path.join(directory, "metadata.json")):  # not a concurrent writer's success
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return corpus.PreparedCorpus.load(directory)
