"""Optimizers for large embedding tables.

A sparse gradient's de-duplication and its rows' update run under a name scope of the variable's name
(`variable_scope`: query_tower/history_encoder/embeddings -> `history_encoder_embeddings`), so a
profile tells the tables' updates apart.
"""

import re

import tensorflow as tf


def sum_duplicate_rows(gradient: tf.IndexedSlices) -> tf.IndexedSlices:
    """The same gradient with each index once: values [n, dim], indices [n] -> [u, dim], [u].

    Rows of a repeated index are summed, indices keep the order of their first appearance: what tf.keras'
    `_deduplicate_sparse_grad` returns, bit for bit. It sums with tf.math.unsorted_segment_sum, whose CPU kernel
    adds one row at a time; here the rows are gathered in segment order and summed by the sorted segment_sum, which
    takes half the time at a sampled-softmax step's 2,000 rows (docs/benchmarks.md).
    """
    unique_indices, positions = tf.unique(gradient.indices)  # [u], [n]: where each row goes
    order = tf.argsort(positions, stable=True)  # [n]: rows grouped by their index, in their original order
    summed = tf.math.segment_sum(tf.gather(gradient.values, order), tf.gather(positions, order))  # [u, dim]
    return tf.IndexedSlices(summed, unique_indices, gradient.dense_shape)


def variable_scope(variable) -> str:
    """A name scope for a variable's update: its name's last two parts (`history_encoder_embeddings`)."""
    parts = variable.name.split(":")[0].split("/")
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", "_".join(parts[-2:]))


class _ScopedSparseUpdates:
    """Mixin: each sparse gradient de-duplicated under its variable's scope (see the module docstring)."""

    def apply_gradients(self, grads_and_vars, *args, **kwargs):
        grads_and_vars = list(grads_and_vars)
        # Keras drops the pairs without a gradient before de-duplicating the rest, in order: so do the scopes.
        self._gradient_scopes = [variable_scope(variable) for gradient, variable in grads_and_vars
                                 if gradient is not None]
        return super().apply_gradients(grads_and_vars, *args, **kwargs)

    def _deduplicate_sparse_grad(self, gradients):
        scopes = getattr(self, "_gradient_scopes", None)
        if scopes is None or len(scopes) != len(gradients):
            scopes = [None] * len(gradients)
        deduplicated = []
        for gradient, scope in zip(gradients, scopes):
            if isinstance(gradient, tf.IndexedSlices):
                with tf.name_scope(scope or "sparse"):
                    gradient = sum_duplicate_rows(gradient)
            deduplicated.append(gradient)
        return deduplicated


class LazyAdam(_ScopedSparseUpdates, tf.keras.optimizers.Adam):
    """Adam that, for sparse (IndexedSlices) gradients, updates only the rows the step touched.

    tf.keras Adam decays both moments and moves the variable over the whole table on every step, even for an
    embedding lookup's sparse gradient: O(num_items x dim) work per step, which dominates a sampled-softmax step
    at 100,000 items and more. Here the moments and the weights of rows not in the batch stay as they are (TF
    Addons' LazyAdam semantics; it is no longer maintained). Dense gradients follow tf.keras Adam exactly.
    Keras de-duplicates sparse indices before update_step (here with `sum_duplicate_rows`), so each row appears once.

    The weights' rows move by `add_to_rows`.

    momentless_variables: substrings of variable names (`history_encoder/embeddings`) whose updates keep the
      second moment only: Adam with beta_1 = 0 for them (RMSprop with Adam's bias correction), one slot per row
      instead of two, so a step gathers and scatters one table fewer for them. Their first moment is not created.
    """

    def __init__(self, learning_rate=0.001, *args, momentless_variables=(), **kwargs):
        super().__init__(learning_rate, *args, **kwargs)
        self.momentless_variables = tuple(momentless_variables)
        if self.momentless_variables and self.amsgrad:
            raise ValueError("LazyAdam: momentless_variables with amsgrad=True; expected one or the other")

    def get_config(self):
        return {**super().get_config(), "momentless_variables": list(self.momentless_variables)}

    def is_momentless(self, variable) -> bool:
        return any(name in variable.name for name in self.momentless_variables)

    def build(self, var_list):
        if not self.momentless_variables:
            return super().build(var_list)
        super(tf.keras.optimizers.Adam, self).build(var_list)  # the base optimizer's bookkeeping, not Adam's slots
        if getattr(self, "_built", False):
            return
        self._built = True
        self._momentums, self._velocities = [], []
        for variable in var_list:
            self._momentums.append(None if self.is_momentless(variable) else
                                   self.add_variable_from_reference(model_variable=variable, variable_name="m"))
            self._velocities.append(self.add_variable_from_reference(model_variable=variable, variable_name="v"))

    def update_step(self, gradient, variable):
        momentless = self.is_momentless(variable) if self.momentless_variables else False
        if not momentless and (not isinstance(gradient, tf.IndexedSlices) or self.amsgrad):
            return super().update_step(gradient, variable)
        with tf.name_scope(variable_scope(variable)):
            if momentless:
                return self._momentless_update(gradient, variable)
            return self._sparse_update(gradient, variable)

    def _momentless_update(self, gradient, variable):
        """Adam with beta_1 = 0: v = beta_2 v + (1 - beta_2) g^2, w -= lr sqrt(1 - beta_2^t) g / (sqrt(v) + eps),
        over the touched rows of a sparse gradient, over the whole variable for a dense one."""
        dtype = variable.dtype
        beta_2 = tf.cast(self.beta_2, dtype)
        beta_2_power = tf.pow(beta_2, tf.cast(self.iterations + 1, dtype))
        alpha = tf.cast(self.learning_rate, dtype) * tf.sqrt(1 - beta_2_power)
        epsilon = self.epsilon * tf.sqrt(1 - beta_2_power) if self.adaptive_epsilon else self.epsilon
        v = self._velocities[self._index_dict[self._var_key(variable)]]
        if not isinstance(gradient, tf.IndexedSlices):
            v.assign(beta_2 * v + (1 - beta_2) * tf.square(gradient))
            variable.assign_sub(alpha * gradient / (tf.sqrt(v) + epsilon))
            return
        indices = gradient.indices  # [rows], each once
        v_rows = beta_2 * tf.gather(v, indices) + (1 - beta_2) * tf.square(gradient.values)  # [rows, dim]
        v.scatter_update(tf.IndexedSlices(v_rows, indices))
        add_to_rows(variable, indices, -alpha * gradient.values / (tf.sqrt(v_rows) + epsilon),
                    self._distribution_strategy)

    def _sparse_update(self, gradient, variable):
        dtype = variable.dtype
        local_step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        beta_1_power = tf.pow(beta_1, local_step)
        beta_2_power = tf.pow(beta_2, local_step)
        alpha = tf.cast(self.learning_rate, dtype) * tf.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        epsilon = self.epsilon * tf.sqrt(1 - beta_2_power) if self.adaptive_epsilon else self.epsilon

        var_key = self._var_key(variable)
        m = self._momentums[self._index_dict[var_key]]
        v = self._velocities[self._index_dict[var_key]]
        indices = gradient.indices  # [rows], each once
        m_rows = beta_1 * tf.gather(m, indices) + (1 - beta_1) * gradient.values  # [rows, dim]
        v_rows = beta_2 * tf.gather(v, indices) + (1 - beta_2) * tf.square(gradient.values)  # [rows, dim]
        m.scatter_update(tf.IndexedSlices(m_rows, indices))
        v.scatter_update(tf.IndexedSlices(v_rows, indices))
        add_to_rows(variable, indices, -alpha * m_rows / (tf.sqrt(v_rows) + epsilon), self._distribution_strategy)


class Adagrad(_ScopedSparseUpdates, tf.keras.optimizers.Adagrad):
    """tf.keras Adagrad, the same arithmetic bit for bit, with sparse gradients' rows summed by `sum_duplicate_rows`
    and both scatter_adds (accumulator, weights) made by `add_to_rows`."""

    def update_step(self, gradient, variable):
        if not isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable)
        with tf.name_scope(variable_scope(variable)):
            return self._sparse_update(gradient, variable)

    def _sparse_update(self, gradient, variable):
        learning_rate = tf.cast(self.learning_rate, variable.dtype)
        accumulator = self._accumulators[self._index_dict[self._var_key(variable)]]
        indices = gradient.indices  # [rows], each once
        strategy = self._distribution_strategy
        accumulated = add_to_rows(accumulator, indices, gradient.values * gradient.values, strategy,
                                  return_rows=True)  # [rows, dim]
        add_to_rows(variable, indices, -learning_rate * gradient.values / tf.sqrt(accumulated + self.epsilon), strategy)



# The optimizers a run chooses by name (trainers: --optimizer), as samplers.SAMPLERS and losses.HEADS name theirs.
OPTIMIZERS = {
    "lazy_adam": LazyAdam,
    "adam": tf.keras.optimizers.Adam,
    "adagrad": Adagrad,
    "sgd": tf.keras.optimizers.SGD,
}

def add_to_rows(variable, indices, deltas, strategy, return_rows=False):
    """variable[indices] += deltas (indices [rows] each once, deltas [rows, dim]); the new rows if return_rows.

    Each row is read, added to and written back whole (gather, then scatter_update): TensorFlow's CPU scatter_update
    copies rows, where scatter_add adds one row at a time and costs twice a gather plus a scatter_update; the sum
    is the same IEEE addition either way. Under ParameterServerStrategy workers update the tables concurrently
    without locks, and there scatter_add stays, which applies every worker's step to a row two workers touch at once.
    """
    if isinstance(strategy, tf.distribute.experimental.ParameterServerStrategy):
        variable.scatter_add(tf.IndexedSlices(deltas, indices))
        return tf.gather(variable, indices) if return_rows else None
    rows = tf.gather(variable, indices) + deltas  # [rows, dim]
    variable.scatter_update(tf.IndexedSlices(rows, indices))
    return rows if return_rows else None

