"""Test subprocesses on the torch and jax backends: Keras' optional probe for TensorFlow answers "not installed".

Keras imports TensorFlow whenever it is installed, on every backend (``keras.utils.set_random_seed`` and the type
checks of ``.keras`` saving), about 3 s per process, although no TensorFlow object can occur on the torch or jax
backend. The dev install has TensorFlow for the tensorflow backend's tests; the subprocesses of the training, resume
and fault tests on the other backends thus run as in a ``[train]`` install, which has none. Only that probe is
refused (TensorBoard or tensorflow-datasets importing TensorFlow themselves are not); ``tests/conftest.py`` puts this
folder on ``PYTHONPATH``.
"""

import os
import sys

PROBE = os.path.join("keras", "src", "utils", "module_utils.py")


class KerasTensorFlowProbe:
    """A meta-path finder refusing ``tensorflow`` to Keras' lazy probe unless the backend is tensorflow."""

    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" and os.environ.get("KERAS_BACKEND", "torch") != "tensorflow" and _asked_by_keras():
            raise ModuleNotFoundError("tensorflow is hidden from Keras' probe in this test process", name=name)
        return None


def _asked_by_keras() -> bool:
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_filename.endswith(PROBE):
            return True
        frame = frame.f_back
    return False


sys.meta_path.insert(0, KerasTensorFlowProbe())
