"""Warnings that a run learns nothing, with likely causes: a setting that leaves a row without negatives (known
before training) and a loss that is exactly 0 or has not moved (seen during it, by callbacks.LossProgressCheck).

Both losses are the mean per-example loss of the run's first batch (the probe), whatever --loss_reduction the
steps use, in a run that starts at step 0 (a resumed, trained model's loss may rightly be flat):
- exactly 0 at step 0: no row has a negative to score against;
- "not moved": the probe's loss after CHECK_STEP steps is within TOLERANCE (relative) of its loss at step 0.
  Healthy runs of the trainer's losses on the built-in corpus move 7-12% in 100 steps; TFRS's tutorial settings
  with the mean reduction (--optimizer=adagrad --learning_rate=0.1) move 0.1-1%. A run of fewer steps is not
  checked.

Each warning is {"kind", "message", ...}: the run summary's "warnings" list.
"""

from typing import TYPE_CHECKING, Any, Dict, Optional

if TYPE_CHECKING:
    from retrieval.retrieval_loss import LossConfig
    from trainers.run_config import OptimizationConfig

CHECK_STEP = 100
TOLERANCE = 0.01


def rows_without_negatives(loss: "LossConfig", optimization: "OptimizationConfig",
                           logged_negatives: bool = False) -> Optional[Dict[str, Any]]:
    """The warning for a run whose every row lacks negatives: in-batch negatives from a global batch of one
    row (its only candidate is its own positive), no cross-batch memory and no logged negatives in the batches
    (logged_negatives: they carry negative_ids); None otherwise."""
    has_others = loss.cross_batch_batches or (logged_negatives and loss.logged_negative_weight > 0)
    if loss.effective_sampler() != "in_batch" or optimization.batch_size > 1 or has_others:
        return None
    setting = "--loss=in_batch" if loss.loss == "in_batch" else f"--loss={loss.loss} --sampler=in_batch"
    return {
        "kind": "no_negatives",
        "message": f"{setting} with --batch_size={optimization.batch_size}: a "
                   "row's only in-batch candidate is its own positive, so it has no negative and its loss is exactly "
                   "0: nothing is learned. Use a --batch_size of 2 or more (TFRS's examples use 4096 to 8192), "
                   "--cross_batch_batches, or a corpus sampler (--loss=sampled_softmax --sampler=log_uniform).",
    }


def zero_loss(initial_loss: float, loss: "LossConfig", optimization: "OptimizationConfig") -> Optional[Dict[str, Any]]:
    """The warning for a step-0 loss of exactly 0 on the first batch, None otherwise."""
    if initial_loss != 0.0:
        return None
    return {
        "kind": "no_negatives",
        "message": f"the loss of the first batch is exactly 0 at step 0: no row has a negative to score against "
                   f"(--loss={loss.loss}, --batch_size={optimization.batch_size}), so nothing will be "
                   "learned. Use a larger --batch_size or a corpus sampler (--sampler=log_uniform).",
    }


def loss_not_moved(initial_loss: float, loss: float, loss_config: "LossConfig",
                   optimization: "OptimizationConfig") -> Optional[Dict[str, Any]]:
    """The warning when the first batch's loss after CHECK_STEP steps (loss) is within TOLERANCE of its step-0
    loss (initial_loss); None when it moved."""
    change = abs(loss - initial_loss) / abs(initial_loss)
    if change > TOLERANCE:
        return None
    return {
        "kind": "loss_not_moving",
        "step": CHECK_STEP,
        "initial_loss": initial_loss,
        "loss": loss,
        "relative_change": change,
        "message": f"the training loss has not moved: on the first batch it is {loss:.6g} after {CHECK_STEP} steps, "
                   f"within {TOLERANCE:.0%} of its {initial_loss:.6g} at step 0; the model is likely to stay at "
                   f"random level. Likely causes: {likely_causes(loss_config, optimization)}",
    }


def likely_causes(loss: "LossConfig", optimization: "OptimizationConfig") -> str:
    """Why a loss does not move under these settings, most specific first."""
    causes = []
    if optimization.loss_reduction == "mean" and optimization.optimizer in ("adagrad", "sgd"):
        causes.append(
            f"--optimizer={optimization.optimizer} --learning_rate={optimization.learning_rate:g} with "
            f"--loss_reduction=mean: the mean over a batch of {optimization.batch_size} gives gradients "
            f"{optimization.batch_size}x smaller than the summed loss of TensorFlow Recommenders, which such settings "
            "are tuned for; use --loss_reduction=sum (TFRS's) or a learning rate that much higher"
        )
    causes.append(f"a --learning_rate ({optimization.learning_rate:g}) too low for "
                  f"--optimizer={optimization.optimizer}")
    if loss.effective_sampler() == "in_batch":
        causes.append(f"too few in-batch negatives (--batch_size={optimization.batch_size})")
    return "; ".join(causes) + "."
