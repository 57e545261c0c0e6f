"""The built-in corpus as a prepared directory, generated once per configuration and cached on disk."""

import dataclasses
import hashlib
import json
import os

import numpy as np

from data import atomic, corpus, records, synthetic

NUM_SHARDS = 4


def cache_key(config: synthetic.SyntheticConfig) -> str:
    """The cache directory's name: a hash of the configuration. validation_per_user=0 is left out of it, so the
    corpora cached before the validation split existed (which had none) are the ones that setting finds, and a
    corpus with a validation split never is."""
    fields = dataclasses.asdict(config)
    if not config.validation_per_user:
        del fields["validation_per_user"]
    text = json.dumps(fields, sort_keys=True)
    return "synthetic-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def prepare(config: synthetic.SyntheticConfig, cache_dir: str) -> corpus.PreparedCorpus:
    """Returns the cached corpus for this configuration, generating it first if needed.

    The directory appears whole or not at all (data.atomic), so an interrupted run never leaves a half-written
    cache that a later run would trust; two runs generating it at once both end with the one that won.
    """
    directory = os.path.join(cache_dir, cache_key(config))
    if not os.path.isfile(os.path.join(directory, "metadata.json")):
        try:
            atomic.write_atomically(directory, lambda staging: _write(config, staging))
        except FileExistsError:
            if not os.path.isfile(os.path.join(directory, "metadata.json")):  # not a concurrent writer's success
                raise
    return corpus.PreparedCorpus.load(directory)


def _write(config: synthetic.SyntheticConfig, directory: str) -> None:
    generated = synthetic.generate(config)
    splits = [("train", generated.train), ("eval", generated.eval)]
    if generated.validation is not None:
        splits.append(("validation", generated.validation))
    for split, interactions in splits:
        records.write_interactions(directory, split, interactions._asdict(), NUM_SHARDS)
    np.save(os.path.join(directory, "item_counts.npy"), generated.item_counts)
    corpus.write_metadata(
        directory,
        num_items=config.num_items,
        num_users=config.num_users,
        num_train=len(generated.train),
        num_eval=len(generated.eval),
        **({"num_validation": len(generated.validation), "validation_per_user": config.validation_per_user}
           if generated.validation is not None else {}),
        description=f"built-in synthetic corpus {dataclasses.asdict(config)}",
    )
