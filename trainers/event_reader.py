"""Reads a run's TensorBoard events back with TensorBoard's own reader, as `tensorboard --logdir` would."""

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util


def read_scalars(run_dir):
    """{tag: [(step, value), ...]} for every scalar summary in one run directory."""
    accumulator = event_accumulator.EventAccumulator(run_dir, size_guidance={event_accumulator.TENSORS: 0})
    accumulator.Reload()
    scalars = {}
    for tag in accumulator.Tags()["tensors"]:
        arrays = [(event.step, tensor_util.make_ndarray(event.tensor_proto)) for event in accumulator.Tensors(tag)]
        if arrays and all(array.ndim == 0 and array.dtype.kind in "fiu" for _, array in arrays):
            scalars[tag] = [(step, float(array)) for step, array in arrays]
    return scalars


def hparams_of(log_dir):
    """The hparams a run recorded ({name: value}), read from the session-start summary of its event file."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    accumulator = event_accumulator.EventAccumulator(log_dir)
    accumulator.Reload()
    content = accumulator.PluginTagToContent("hparams")
    for raw in content.values():
        data = plugin_data_pb2.HParamsPluginData.FromString(raw)
        if data.HasField("session_start_info"):
            hparams = data.session_start_info.hparams
            return {name: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind")) for name, value in hparams.items()}
    return {}
