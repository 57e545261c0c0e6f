"""`data.prepare --runner=beam`: the prepared corpus of data.prepare computed by an Apache Beam pipeline, whose
steps hold one user's rows or a chunk of one file at a time, never the log (docs/bench_prepare.md measures what
Beam's local runner itself holds).

    files, one element each
      -> ReadFile: data.readers.interactions_of_file (the in-process path's validation), bad records counted per
         file, rows grouped by user within chunks of the file (CHUNK_ROWS)
      -> GroupByKey by user; each row numbered in log order (file offsets from the per-file counts: the order
         key of ties and, without --timestamp_column, the timestamp, as in process); data.splits.held_out on the
         user's rows (split=last)
      -> training counts per item and per user -> data.vocabulary.build once (same ranking, same OOV bucket):
         the vocabularies are side inputs (they grow with the catalogue, not with the log)
      -> per user: ids, eval drops by reason (data.prepare's rules), histories (data.history on the user's
         training rows, with --history_length), data.records' serializer
      -> WriteToTFRecord, named as data.records.shard_paths names the files, as many as the runner's bundles
         unless --num_shards fixes them (Beam then groups each shard's records on one worker)
      -> the counts, in one small JSON the driver turns into metadata.json (data.corpus) and the report

It runs on Beam's FnApiRunner in local processes by default (direct_running_mode=multi_processing; nothing is
downloaded at run time, Beam's Prism runner never runs) or on any runner Beam's own pipeline options name
(`--beam_options="--runner=FlinkRunner ..."`; README: "Logs that outgrow one machine"). Files are read and the
output written with POSIX calls, under data.atomic's staging name beside --output_dir and renamed when complete,
so the driver and the workers must share that file system (a local disk here; a shared mount on a cluster;
gs:// and s3:// paths are not supported yet).

Not yet on this runner (refused in one line by `unsupported_options`): --eval_input, feature side files and
feature columns, context columns, logged negatives, --split=random (the in-process draw is one permutation
of the whole log) and --validation_per_user (a second per-user split of the training rows).
"""

import dataclasses
import json
import os
import shlex
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

from data import atomic, corpus, history, readers, records, splits, vocabulary
from data import prepare as prepare_lib
from data.readers import DataError
from data.schema import Schema

PIPELINE_COUNTS = "_pipeline_counts.json"  # written by the pipeline into the staging directory, read and removed


@dataclasses.dataclass(frozen=True)
class FileCounts:
    """What ReadFile found in one file: rows kept, bad records (and their first messages), a fatal error."""

    index: int
    kept: int
    bad: int
    messages: Tuple[str, ...]
    fatal: Optional[str] = None


def prepare(input_pattern: str, schema: Schema, output_dir: str, *, file_format: str = "csv",
            eval_input: Optional[str] = None, item_features_input: Optional[str] = None,
            user_features_input: Optional[str] = None, split: str = "last", eval_per_user: int = 1, seed: int = 0,
            min_item_count: int = 1, num_shards: Optional[int] = None, skip_bad_records: bool = False,
            overwrite: bool = False, description: str = "", history_length: Optional[int] = None,
            beam_options: str = "", validation_per_user: int = 0) -> "prepare_lib.Summary":
    """data.prepare.prepare's corpus, by the Beam pipeline (same arguments; split=last only, seed is recorded).

    num_shards: files per split; None lets the runner pick (one per bundle: here one per worker process). A fixed
      number makes Beam group each shard's records on one worker (a group as large as the log / num_shards).
    beam_options: Beam's own pipeline options (a command line; see pipeline_options).
    Raises ValueError (an option not on this runner yet, bad arguments), DataError, FileExistsError; output_dir
    is then left as it was.
    """
    unsupported = unsupported_options(schema, eval_input, item_features_input, user_features_input, split,
                                      validation_per_user)
    if unsupported:
        raise ValueError(f"{unsupported}: not on --runner=beam yet; prepare this log with --runner=in_process")
    prepare_lib.check_arguments(output_dir, overwrite, split, eval_per_user, min_item_count, num_shards or 1,
                                history_length)
    files = readers.expand(input_pattern)
    finished = {}

    def write(staging: str) -> None:
        import apache_beam as beam

        runner, options = pipeline_options(beam_options)
        with beam.Pipeline(runner=runner, options=options) as pipeline:
            build_pipeline(pipeline, files, schema, staging, file_format=file_format, eval_per_user=eval_per_user,
                           min_item_count=min_item_count, num_shards=num_shards, history_length=history_length)
        finished["summary"] = _finish(staging, input_pattern, files, schema, output_dir, skip_bad_records,
                                      eval_per_user, seed, min_item_count, description, history_length)

    atomic.write_atomically(output_dir, write, overwrite)  # a failure leaves output_dir as it was
    return finished["summary"]


def _finish(staging, input_pattern, files, schema, output_dir, skip_bad_records, eval_per_user, seed, min_item_count,
            description, history_length) -> "prepare_lib.Summary":
    """Checks the pipeline's counts as data.prepare checks its rows (DataError), writes metadata.json, and
    returns the Summary."""
    with open(os.path.join(staging, PIPELINE_COUNTS)) as file:
        counts = json.load(file)
    os.remove(os.path.join(staging, PIPELINE_COUNTS))
    bad = _bad_records(counts["files"], skip_bad_records)
    kept = sum(part["kept"] for part in counts["files"])
    if not kept:
        reason = f", {bad.count} bad records skipped" if bad.count else ""
        raise DataError(f"--input {input_pattern}: no interactions in {len(files)} file(s){reason}")
    rows = prepare_lib.RowCounts(read={"input": kept + bad.count}, bad_records={"input": bad.count},
                                 train=counts["train"], eval=counts["eval"], eval_dropped=counts["eval_dropped"])
    if not rows.eval:
        raise DataError(prepare_lib.no_eval_message(input_pattern, None, eval_per_user, rows.eval_dropped))
    eval_dropped_oov = rows.eval_dropped["unseen_item"] + rows.eval_dropped["rare_item"]
    corpus.write_metadata(
        staging, num_items=counts["num_items"], num_users=counts["num_users"], num_train=rows.train,
        num_eval=rows.eval, description=description or f"prepared from {input_pattern}", source_files=files,
        eval_source_files=None, schema=dataclasses.asdict(schema), split="last", eval_per_user=eval_per_user,
        seed=seed, min_item_count=min_item_count, oov_item_id=counts["oov_id"], eval_dropped_oov=eval_dropped_oov,
        rows=rows.metadata(), num_bad_records=bad.count, bad_record_messages=bad.messages,
        item_features={}, user_features={}, context_columns=[],
        **({} if history_length is None else {"history_length": history_length}))
    return prepare_lib.Summary(
        output_dir=output_dir, num_rows_read=sum(rows.read.values()), num_items=counts["num_items"],
        num_users=counts["num_users"], num_train=rows.train, num_eval=rows.eval, oov_item_id=counts["oov_id"],
        num_items_folded=counts["num_items_folded"], eval_dropped_oov=eval_dropped_oov, bad_records=bad,
        items_without_features={}, rows=rows, feature_bad_records=readers.BadRecords(),
        history_length=history_length)


def _bad_records(files: List[Dict], skip_bad_records: bool) -> readers.BadRecords:
    """The files' bad records as one BadRecords, in file order; without skip_bad_records, DataError naming the
    first one, as the in-process read stops at it (a file's fatal error comes after its bad records)."""
    merged = readers.BadRecords()
    for part in files:
        if part["bad"] and not skip_bad_records:
            raise DataError(part["messages"][0])
        if part["fatal"]:
            raise DataError(part["fatal"])
        merged.count += part["bad"]
        merged.messages.extend(part["messages"])
    merged.messages = merged.messages[: readers.MAX_REPORTED_BAD_RECORDS]
    return merged


def unsupported_options(schema: Schema, eval_input, item_features_input, user_features_input,
                        split: str, validation_per_user: int = 0) -> Optional[str]:
    """The first option this runner cannot run yet, as the flag the user typed, or None."""
    checks = (
        (eval_input, "--eval_input"),
        (item_features_input or user_features_input, "--item_features_input / --user_features_input"),
        (schema.item_feature_columns or schema.user_feature_columns, "--item_feature_columns / --user_feature_columns"),
        (schema.context_columns or schema.numeric_context_columns, "--context_columns / --numeric_context_columns"),
        (schema.negative_column, "--negative_column"),
        (split != "last", f"--split={split}"),
        (validation_per_user > 0, f"--validation_per_user={validation_per_user}"),
    )
    return next((flag for present, flag in checks if present), None)


def pipeline_options(beam_options: str):
    """(runner, PipelineOptions) of beam_options (Beam's own command-line options): the runner they name, or Beam's
    FnApiRunner over local worker processes (multi_processing, one per core unless --direct_num_workers says)."""
    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

    arguments = shlex.split(beam_options or "")
    options = PipelineOptions(arguments)
    if options.view_as(StandardOptions).runner:
        return None, options  # Beam builds the runner the options name
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    defaults = ["--direct_running_mode=multi_processing"]
    if not any(argument.startswith("--direct_num_workers") for argument in arguments):
        defaults.append(f"--direct_num_workers={os.cpu_count() or 1}")
    options = PipelineOptions(defaults + arguments)
    options.view_as(DirectOptions)  # validates the direct options now, not inside the run
    return FnApiRunner(), options


# Rows a reader holds before it emits them grouped by user: Beam's cost is per element, so a file's rows travel
# to the GroupByKey as one (user, rows) element per user per chunk, not one per row (with the per-bundle counts:
# 100,000 rows in one process 15.2 s -> 9.7 s).
CHUNK_ROWS = 100_000


def _read_file_fn(beam, schema: Schema, file_format: str):
    class ReadFileFn(beam.DoFn):
        """(file index, path) -> (user, [(file index, row in file, item, timestamp or None, weight or None)]) of
        its good rows, grouped by user within chunks of CHUNK_ROWS, and the file's FileCounts under "counts"."""

        def process(self, element):
            index, path = element
            bad, kept, fatal, by_user = readers.BadRecords(), 0, None, {}
            try:
                for user, item, timestamp, weight in readers.interactions_of_file(path, schema, file_format, bad, True):
                    by_user.setdefault(user, []).append((index, kept, item, timestamp, weight))
                    kept += 1
                    if kept % CHUNK_ROWS == 0:
                        yield from by_user.items()
                        by_user = {}
            except DataError as error:  # a bad header, an unreadable TFRecord: the file cannot be read on
                fatal = str(error)
            yield from by_user.items()
            yield beam.pvalue.TaggedOutput("counts", FileCounts(index, kept, bad.count, tuple(bad.messages), fatal))

    return ReadFileFn()


def _offsets(counts: List[FileCounts]) -> Dict[int, int]:
    """{file index: the number of good rows in the files before it}: a row's place in the whole log."""
    ordered = sorted(counts, key=lambda count: count.index)
    starts = np.cumsum([0] + [count.kept for count in ordered])
    return {count.index: int(start) for count, start in zip(ordered, starts)}


def _split_user(element, eval_per_user: int, offsets: Dict[int, int]) -> Tuple[str, List[Tuple], np.ndarray]:
    """(user, [[read rows] per chunk]) -> (user, its rows (order, item, timestamp, weight) in log order, is_eval
    [n] bool): order a row's number in the whole log (the timestamp without a timestamp column, as in process),
    and data.splits.held_out on the user's rows in log order (its tie rule: file order)."""
    user, chunks = element
    rows = []
    for chunk in chunks:
        for index, row_in_file, item, timestamp, weight in chunk:
            order = offsets[index] + row_in_file
            rows.append((order, item, order if timestamp is None else timestamp, weight))
    rows.sort()  # by order
    timestamps = np.array([row[2] for row in rows], np.int64)
    return user, rows, splits.held_out(np.zeros(len(rows), np.int64), timestamps, "last", eval_per_user)


def _training_counts_fn(beam, eval_per_user: int):
    class TrainingCountsFn(beam.DoFn):
        """(user, chunks) -> (("item", key), training rows) of every item read (0: only held out) and
        (("user", key), training rows), summed over the bundle first (one element per key and bundle)."""

        def start_bundle(self):
            self.counts = {}

        def process(self, element, offsets):
            user, rows, is_eval = _split_user(element, eval_per_user, offsets)
            for (_, item, _, _), held_out in zip(rows, is_eval.tolist()):
                key = ("item", item)
                self.counts[key] = self.counts.get(key, 0) + (0 if held_out else 1)
            self.counts[("user", user)] = int((~is_eval).sum())

        def finish_bundle(self):
            from apache_beam.transforms.window import GlobalWindow
            from apache_beam.utils.windowed_value import WindowedValue

            for key, count in self.counts.items():
                yield WindowedValue((key, count), 0, [GlobalWindow()])

    return TrainingCountsFn()


def _vocabularies(counts: List[Tuple[Tuple[str, str], int]], min_item_count: int):
    """({item key: (id, training count)}, item Vocabulary, {user key: id}, user Vocabulary) from ((kind, key),
    training count) pairs: every item read (eval-only ones with 0) and the users with training rows (data.prepare's
    rules: an item below min_item_count in the OOV bucket)."""
    item_counts = [(key, count) for (kind, key), count in counts if kind == "item"]
    user_counts = [(key, count) for (kind, key), count in counts if kind == "user"]
    items, item_ids = vocabulary.build([key for key, _ in item_counts],
                                       np.array([count for _, count in item_counts], np.int64), min_item_count)
    user_keys = [key for key, _ in user_counts]
    users, user_ids = prepare_lib.trained_user_vocabulary(user_keys, np.array([c for _, c in user_counts], np.int64))
    return ({key: (item_id, count) for (key, count), item_id in zip(item_counts, item_ids.tolist())}, items,
            {key: user_id for key, user_id in zip(user_keys, user_ids.tolist()) if user_id >= 0}, users)


COUNTED = ("train", "eval") + prepare_lib.EVAL_DROP_REASONS  # what a records bundle counts: rows written, dropped


def _user_records_fn(beam, with_weight: bool, eval_per_user: int, min_item_count: int,
                     history_length: Optional[int]):
    class UserRecordsFn(beam.DoFn):
        """(user, chunks) -> the user's serialized records under "train" / "eval" (with their histories, and the
        user's latest history under "latest", when history_length is given), and per bundle {"train", "eval",
        reason: rows} under "counts" (the eval rows dropped by data.prepare's reasons and rules)."""

        def setup(self):
            self.serialize = records._serializer(with_weight, with_history=history_length is not None)
            self.serialize_latest = records.latest_history_serializer()

        def start_bundle(self):
            self.counts = dict.fromkeys(COUNTED, 0)

        def process(self, element, vocabularies, offsets):
            item_of, _, user_of, _ = vocabularies
            user, rows, is_eval = _split_user(element, eval_per_user, offsets)
            user_id = user_of.get(user, -1)
            ids, item_counts = (np.array(column, np.int64) for column in zip(*[item_of[row[1]] for row in rows]))
            user_counts = np.full(len(rows), int((~is_eval).sum()), np.int64)
            drops = prepare_lib.eval_drops(is_eval, item_counts, user_counts, min_item_count)
            for reason, mask in drops.items():
                self.counts[reason] += int(mask.sum())
            if user_id < 0:  # no training row: every row was dropped
                return
            written = ~np.logical_or.reduce(list(drops.values()))
            histories, latest = _user_histories(ids, np.array([row[2] for row in rows], np.int64), is_eval,
                                                history_length)
            for index in np.flatnonzero(written).tolist():
                split = "eval" if is_eval[index] else "train"
                self.counts[split] += 1
                _, _, timestamp, weight = rows[index]
                record = self.serialize(user_id, int(ids[index]), timestamp, weight, history=histories[index])
                yield beam.pvalue.TaggedOutput(split, record)
            if latest is not None:
                yield beam.pvalue.TaggedOutput("latest", self.serialize_latest(user_id, latest))

        def finish_bundle(self):
            from apache_beam.transforms.window import GlobalWindow
            from apache_beam.utils.windowed_value import WindowedValue

            yield beam.pvalue.TaggedOutput("counts", WindowedValue(self.counts, 0, [GlobalWindow()]))

    return UserRecordsFn()


def _user_histories(item_ids: np.ndarray, timestamps: np.ndarray, is_eval: np.ndarray,
                    history_length: Optional[int]):
    """([each row's history as a list], the user's latest history as a list), or ([()] * n, None) without
    history_length: data.history over the user's training rows, as data.prepare computes it for the whole log."""
    if history_length is None:
        return [()] * len(item_ids), None
    train = ~is_eval
    log = history.history_log(np.zeros(int(train.sum()), np.int64), item_ids[train], timestamps[train])
    queries = np.concatenate([timestamps, [np.iinfo(np.int64).max]])
    padded = history.histories_from_log(log, np.zeros(len(queries), np.int64), queries, history_length)
    rows = [row[row != history.PAD].tolist() for row in padded]
    return rows[:-1], rows[-1]


def _sum_counts(parts: Iterable[Dict[str, int]]) -> Dict[str, int]:
    """{name: rows} summed (a CombineGlobally function: parts may be partial sums)."""
    total = dict.fromkeys(COUNTED, 0)
    for part in parts:
        for name, count in part.items():
            total[name] += count
    return total


def _write_vocabularies(staging: str, vocabularies) -> None:
    _, items, _, users = vocabularies
    np.save(os.path.join(staging, "item_counts.npy"), items.counts.astype(np.int64))
    vocabulary.write_tsv(os.path.join(staging, corpus.ITEM_VOCABULARY), items)
    vocabulary.write_tsv(os.path.join(staging, corpus.USER_VOCABULARY), users, with_counts=False)


def _write_counts(staging: str, files: List[FileCounts], counts: Dict[str, int], vocabularies,
                  min_item_count: int) -> None:
    item_of, items, _, users = vocabularies
    document = {
        "files": [dataclasses.asdict(count) for count in sorted(files, key=lambda count: count.index)],
        "eval_dropped": {reason: counts[reason] for reason in prepare_lib.EVAL_DROP_REASONS},
        "train": counts["train"], "eval": counts["eval"], "num_items": len(items), "num_users": len(users),
        "oov_id": items.oov_id, "num_items_folded": sum(1 for _, count in item_of.values() if count < min_item_count),
    }
    with open(os.path.join(staging, PIPELINE_COUNTS), "w") as file:
        json.dump(document, file)


def build_pipeline(pipeline, files: List[str], schema: Schema, staging: str, *, file_format: str, eval_per_user: int,
                   min_item_count: int, num_shards: Optional[int], history_length: Optional[int] = None) -> None:
    """Adds the whole prepare to `pipeline` (see the module docstring); it writes into staging when run."""
    import apache_beam as beam
    from apache_beam.transforms.combiners import ToList

    read = (pipeline | "Files" >> beam.Create(list(enumerate(files))) | "Spread" >> beam.Reshuffle()
            | "Read" >> beam.ParDo(_read_file_fn(beam, schema, file_format)).with_outputs("counts", main="rows"))
    file_counts = read.counts | "AllFileCounts" >> ToList()
    offsets = beam.pvalue.AsSingleton(file_counts | "Offsets" >> beam.Map(_offsets))
    users = read.rows | "GroupByUser" >> beam.GroupByKey()
    vocabularies = (users | "TrainingCounts" >> beam.ParDo(_training_counts_fn(beam, eval_per_user), offsets)
                    | "SumTrainingCounts" >> beam.CombinePerKey(sum) | "AllCounts" >> ToList()
                    | "Vocabularies" >> beam.Map(_vocabularies, min_item_count))
    records_fn = _user_records_fn(beam, schema.weight_column is not None, eval_per_user, min_item_count,
                                  history_length)
    outputs = (users | "Records" >> beam.ParDo(records_fn, beam.pvalue.AsSingleton(vocabularies), offsets)
               .with_outputs("train", "eval", "latest", "counts"))
    names = ("train", "eval") + (("latest",) if history_length is not None else ())
    for name in names:
        getattr(outputs, name) | f"Write{name.title()}" >> beam.io.WriteToTFRecord(
            os.path.join(staging, records.LATEST_HISTORY if name == "latest" else name), file_name_suffix=".tfrecord",
            num_shards=num_shards or 0, shard_name_template="-SSSSS-of-NNNNN")
    counts = outputs.counts | "SumCounts" >> beam.CombineGlobally(_sum_counts)
    vocabularies | "WriteVocabularies" >> beam.Map(lambda vocab: _write_vocabularies(staging, vocab))
    (pipeline | "Done" >> beam.Create([None])
     | "WriteCounts" >> beam.Map(
         lambda _, files_read, written, vocab: _write_counts(staging, files_read, written, vocab, min_item_count),
         beam.pvalue.AsSingleton(file_counts), beam.pvalue.AsSingleton(counts), beam.pvalue.AsSingleton(vocabularies)))
