"""ODIR-5K as a TensorFlow Datasets dataset (``odir5k``), built and read without TensorFlow.

- ``odir_core.data.tfds.builder``: the ``Odir5k`` builder (configs ``prepared_224``,
  ``prepared_512``, ``raw``; ArrayRecord files; manual download of any ODIR-5K layout).
- ``python -m odir_core.tfds build --source PATH``: build it from the command line.
- ``odir_core.data.tfds.source``: a built dataset as training data (``--data tfds:odir5k/prepared_512``).

Needs the optional ``tensorflow-datasets`` and ``array-record`` packages (``pip install .[tfds]``);
nothing else in ``odir_core`` imports them.
"""
