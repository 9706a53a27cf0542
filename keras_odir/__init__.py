"""keras-odir: dual-eye ResNet50 for ODIR-5K in Keras 3 (torch, jax or tensorflow backend).

The torch backend is the default: ``KERAS_BACKEND`` is set to ``torch`` here when the
user has not chosen one, before keras is imported anywhere in this package. Importing the
package registers its layers, loss, optimizer and metric, so ``keras.saving.load_model`` reads
its ``.keras`` files after ``import keras_odir`` alone.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras_odir.correlation  # noqa: E402,F401  (these register the classes saved in .keras files)
import keras_odir.epoch_outputs  # noqa: E402,F401
import keras_odir.layers  # noqa: E402,F401
import keras_odir.losses  # noqa: E402,F401
import keras_odir.optimizers  # noqa: E402,F401
