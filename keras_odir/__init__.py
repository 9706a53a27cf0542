"""keras-odir: dual-eye ResNet50 for ODIR-5K in Keras 3 (torch, jax or tensorflow backend).

The torch backend is the default: ``KERAS_BACKEND`` is set to ``torch`` here when the
user has not chosen one, before keras is imported anywhere in this package.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")
