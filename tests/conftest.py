"""Test-session setup shared by every test module.

torchvision is imported first: once TensorFlow is loaded (``torch.utils.tensorboard`` and the
tensorflow Keras backend load it when it is installed), importing torchvision crashes the process
(its triton dependency), while the other order is fine. The product itself never imports torchvision
from ``keras_odir``; the tests use it as the reference.

The Keras backend is keras_odir's default (torch) unless ``KERAS_BACKEND`` names another, whichever test
module imports ``keras`` first (Keras alone would fall back to ``~/.keras/keras.json``, often tensorflow).
"""

import os
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")
# subprocesses load tests/sitecustomize.py (Keras' TensorFlow probe off on the torch and jax backends: 3 s each)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))

import torchvision  # noqa: F401, E402
