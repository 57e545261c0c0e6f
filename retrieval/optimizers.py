"""Optimizers for large embedding tables."""

import tensorflow as tf


class LazyAdam(tf.keras.optimizers.Adam):
    """Adam that, for sparse (IndexedSlices) gradients, updates only the rows the step touched.

    tf.keras Adam decays both moments and moves the variable over the whole table on every step, even for an
    embedding lookup's sparse gradient: O(num_items x dim) work per step, which dominates a sampled-softmax step
    at 100,000 items and more. Here the moments and the weights of rows not in the batch stay as they are (TF
    Addons' LazyAdam semantics; it is no longer maintained). Dense gradients follow tf.keras Adam exactly.
    Keras de-duplicates sparse indices before update_step, so each row appears once.
    """

    def update_step(self, gradient, variable):
        if not isinstance(gradient, tf.IndexedSlices) or self.amsgrad:
            return super().update_step(gradient, variable)
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
        indices = gradient.indices
        m_rows = beta_1 * tf.gather(m, indices) + (1 - beta_1) * gradient.values
        v_rows = beta_2 * tf.gather(v, indices) + (1 - beta_2) * tf.square(gradient.values)
        m.scatter_update(tf.IndexedSlices(m_rows, indices))
        v.scatter_update(tf.IndexedSlices(v_rows, indices))
        variable.scatter_sub(tf.IndexedSlices(alpha * m_rows / (tf.sqrt(v_rows) + epsilon), indices))
