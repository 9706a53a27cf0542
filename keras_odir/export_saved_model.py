"""The TensorFlow half of ``keras_odir.export --format saved_model``, run by it in a subprocess with
``KERAS_BACKEND=tensorflow``:
``python -m keras_odir.export_saved_model SOURCE.keras FOLDER SIZE INPUTS.npz OUTPUTS.npz``.

It loads the model, writes a SavedModel with Keras' ``ExportArchive`` (one ``serve`` endpoint and signature:
named inputs ``left``, ``right`` float32 [batch, S, S, 3] -> {"probabilities", "logits"}), loads the folder back
with ``tf.saved_model.load`` and runs its ``serve`` signature on the arrays of INPUTS.npz (``left``, ``right``),
saving what it returns as OUTPUTS.npz for the exporter's check.
"""

from __future__ import annotations

import sys

import numpy as np

from odir_core.evaluation.export_metadata import INPUTS, OUTPUTS

ENDPOINT = "serve"


def write(source: str, folder: str, size: int) -> None:
    """SavedModel of the .keras model ``source`` (BatchNorm folded, inference only) into ``folder``, for inputs
    of ``size`` x ``size`` pixels."""
    import keras
    import tensorflow as tf

    from keras_odir.folding import fold_batchnorm
    from keras_odir.weights import read_keras_model

    model = fold_batchnorm(read_keras_model(source))
    # No ``archive.track(model)``: the endpoint's variables are saved with it anyway, and tracking traces every
    # nested model's default signature at its declared input shape, [batch, None, None, 3] for the shared
    # backbone, which a Vision Transformer cannot run at (its position embeddings need the image size).
    archive = keras.export.ExportArchive()

    def serve(left, right):
        logits = model({"left": left, "right": right}, training=False)
        return {OUTPUTS[0]: tf.sigmoid(logits), OUTPUTS[1]: logits}

    archive.add_endpoint(ENDPOINT, serve, input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32, name=name)
                                                           for name in INPUTS])
    archive.write_out(folder, verbose=False)


def run(folder: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The outputs of the SavedModel in ``folder`` (loaded with TensorFlow alone) for named ``inputs``."""
    import tensorflow as tf

    signature = tf.saved_model.load(folder).signatures[ENDPOINT]
    outputs = signature(**{name: tf.constant(inputs[name]) for name in INPUTS})
    return {name: outputs[name].numpy() for name in OUTPUTS}


def main(argv=None) -> int:
    source, folder, size, inputs, outputs = argv if argv is not None else sys.argv[1:]
    write(source, folder, int(size))
    with np.load(inputs) as arrays:
        np.savez(outputs, **run(folder, dict(arrays)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
