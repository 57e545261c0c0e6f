"""Reads scalars back with TensorBoard's own event-file reader, as `tensorboard --logdir` would."""

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util


def read_scalars(run_dir):
    """{tag: [(step, value), ...]} for every scalar summary in one run directory."""
    accumulator = event_accumulator.EventAccumulator(run_dir, size_guidance={event_accumulator.TENSORS: 0})
    accumulator.Reload()
    scalars = {}
    for tag in accumulator.Tags()["tensors"]:
        events = accumulator.Tensors(tag)
        values = [(event.step, float(tensor_util.make_ndarray(event.tensor_proto))) for event in events]
        if values and all(event.tensor_proto.tensor_shape.dim == [] for event in events):
            scalars[tag] = values
    return scalars
