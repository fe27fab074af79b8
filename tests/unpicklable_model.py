"""A model object that does not survive pickling, as a dLux model does: its
``__getattr__`` delegates to a field, and recurses while the object is being
rebuilt (the field is not there yet). Importable by the test cluster's
workers (this directory is on their path), so it can travel by reference."""

import jax.numpy as jnp
import numpy as np


class Model:
    def __init__(self, weights):
        self.weights = weights

    def __getattr__(self, name):
        return getattr(self.weights, name)


MODEL = Model(np.linspace(1.0, 2.0, 6).astype(np.float32))


def loss(x):
    return jnp.sum(MODEL.weights * jnp.sin(x) ** 2)
