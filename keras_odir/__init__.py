"""keras-odir: the dual-eye ODIR-5K classifier (ResNet50 by default) in Keras 3 (torch, jax or tensorflow backend).

The torch backend is the default: ``KERAS_BACKEND`` is set to ``torch`` here when the
user has not chosen one (unset or empty), before keras is imported anywhere in this package; a name
Keras does not know is refused here too, with one line from the command-line tools. Importing the
package registers its layers, loss, optimizer and metric, so ``keras.saving.load_model`` reads
its ``.keras`` files after ``import keras_odir`` alone. Where keras (or its backend) is not installed the
package still imports, without registering: predict and evaluate then run an exported ``.onnx`` model.
"""

import os
import sys
from pathlib import Path

from odir_core.errors import InputError

# the backends keras/src/backend/__init__.py imports; any other KERAS_BACKEND fails inside keras
KERAS_BACKENDS = ("torch", "jax", "tensorflow", "numpy", "openvino")


class BackendError(InputError):
    """KERAS_BACKEND names no Keras backend (exit 2)."""


def choose_backend(environ=os.environ) -> str:
    """Set ``KERAS_BACKEND`` to ``torch`` when unset or empty and return it; refuse a name Keras does not know."""
    if not environ.get("KERAS_BACKEND"):
        environ["KERAS_BACKEND"] = "torch"
    name = environ["KERAS_BACKEND"]
    if name not in KERAS_BACKENDS:
        raise BackendError(f"KERAS_BACKEND = {name!r} is not a Keras backend: set it to torch (the default when "
                           f"unset), {', '.join(KERAS_BACKENDS[1:-1])} or {KERAS_BACKENDS[-1]}")
    return name


def _started_as_tool() -> bool:
    """Whether this import starts one of the package's tools: ``python -m keras_odir.TOOL`` (``sys.argv[0]`` is
    ``-m`` while the module's package is imported) or an installed ``keras-odir-TOOL`` script."""
    return sys.argv[:1] == ["-m"] or Path(sys.argv[0] if sys.argv else "").name.startswith("keras-odir-")


try:
    choose_backend()
except BackendError as exc:
    if not _started_as_tool():
        raise
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(exc.exit_code)

try:
    import keras  # noqa: E402,F401
except ModuleNotFoundError:  # no keras (or no backend): only the framework-free path, an exported .onnx model, works
    pass
else:
    import keras_odir.correlation  # noqa: E402,F401  (these register the classes saved in .keras files)
    import keras_odir.epoch_outputs  # noqa: E402,F401
    import keras_odir.executor  # noqa: E402,F401  (PlannedModel: the class of a trained model's last.keras)
    import keras_odir.families.vit  # noqa: E402,F401  (the Vision Transformer's layers)
    import keras_odir.layers  # noqa: E402,F401
    import keras_odir.losses  # noqa: E402,F401
    import keras_odir.mldecoder  # noqa: E402,F401
    import keras_odir.optimizers  # noqa: E402,F401
