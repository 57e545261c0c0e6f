"""The corpus a run names with --data: the built-in synthetic corpus, MovieLens 100K, or a prepared directory.

One place knows the three sources and the cache they share: the trainer, evaluation and export all load their
corpus through `load_corpus`.
"""

import os

from data import builtin, corpus, synthetic

# The cache root: built-in corpora under synthetic-<hash>/, MovieLens under movielens/.
DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "retrieval-trainer")
BUILTIN, MOVIELENS = "builtin", "movielens"


def load_corpus(data: str, cache_dir: str, synthetic_config: synthetic.SyntheticConfig) -> corpus.PreparedCorpus:
    """The corpus of --data: 'builtin' (synthetic_config's corpus, generated into the cache on first use),
    'movielens' (fetched and prepared into the cache on first use) or a prepared corpus directory.

    Raises ValueError (a bad synthetic config, CorpusError, DataError) or movielens.DownloadError.
    """
    if data == BUILTIN:
        synthetic_config.validate()  # before anything touches the cache
        return builtin.prepare(synthetic_config, cache_dir)
    if data == MOVIELENS:
        from data import movielens  # its prepare path reads CSVs; the other sources never need it

        return movielens.prepared(movielens.directory(cache_dir))
    return corpus.PreparedCorpus.load(data)
