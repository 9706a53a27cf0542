"""``python -m keras_odir.convert SRC DST``: a dual model between a torch ``.pth`` and a keras_odir
``.keras``, in the direction given by the suffixes (the weight table is ``keras_odir.weights``).

A ``.pth`` may be torch_odir's (``best.pth``) or the study's own (``classifier.*`` head keys);
its backbone and head are read from its keys.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import keras

from keras_odir.model import dual_model_from_state
from keras_odir.weights import WeightConversionError, keras_to_torch_state, read_torch_state, to_numpy
from odir_core.checkpoints import KERAS_SUFFIX, TORCH_SUFFIXES, check_finite, dual_state_dict
from odir_core.model_spec import HEADS, infer_architecture


def _atomic_target(dst: Path):
    return tempfile.NamedTemporaryFile(dir=dst.parent, prefix=f".{dst.stem}.", suffix=dst.suffix, delete=False)


def convert_file(src: str | os.PathLike, dst: str | os.PathLike, *, head: str | None = None,
                 freeze_backbone: bool = False, image_size: int | None = None, force: bool = False) -> Path:
    """Convert a dual model's ``.pth`` into a keras_odir ``.keras`` or back; returns ``dst``."""
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"{src} does not exist.")
    if dst.exists() and not force:
        raise FileExistsError(f"{dst} exists; choose another name or pass --force to overwrite it.")
    directions = {(s, KERAS_SUFFIX) for s in TORCH_SUFFIXES} | {(KERAS_SUFFIX, s) for s in TORCH_SUFFIXES}
    if (src.suffix, dst.suffix) not in directions:
        raise ValueError(f"Convert between .pth/.pt and .keras; got {src.name} -> {dst.name}.")
    dst.parent.mkdir(parents=True, exist_ok=True)
    with _atomic_target(dst) as tmp:
        tmp_path = Path(tmp.name)
    try:
        if dst.suffix == KERAS_SUFFIX:
            state = dual_state_dict(read_torch_state(src))
            check_finite(((k, to_numpy(v)) for k, v in state.items()), str(src))
            _, found = infer_architecture(state)
            if head is not None and head != found:
                raise WeightConversionError(f"{src} holds head {found}, not the requested {head}.")
            dual_model_from_state(state, source=str(src), freeze_backbone=freeze_backbone,
                                  image_size=image_size).save(tmp_path)
        else:
            import torch

            model = keras.saving.load_model(src)
            state = keras_to_torch_state(model)
            check_finite(((k, v.numpy()) for k, v in state.items()), str(src))
            torch.save(state, tmp_path)
        os.replace(tmp_path, dst)
    finally:
        tmp_path.unlink(missing_ok=True)
    return dst


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m keras_odir.convert",
        description="Convert a dual model between a torch state_dict (.pth/.pt: torch_odir's or the study's "
                    "own) and a keras_odir model (.keras), in the direction given by the file suffixes; "
                    "backbone and head are read from the checkpoint.")
    parser.add_argument("src", type=Path, help="input file: a torch_odir or study .pth/.pt, or a keras_odir .keras")
    parser.add_argument("dst", type=Path, help="output file: .keras when SRC is .pth/.pt, .pth/.pt when SRC is .keras")
    parser.add_argument("--head", choices=tuple(HEADS),
                        help="torch -> keras: fail unless the checkpoint holds this head (default: detected)")
    parser.add_argument("--freeze-backbone", action="store_true",
                        help="torch -> keras: build the Keras model with a frozen backbone (inference-mode BatchNorm)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="torch -> keras: fix the Keras input size to N x N (default: any size)")
    parser.add_argument("--force", action="store_true", help="overwrite DST when it exists")
    args = parser.parse_args(argv)
    try:
        out = convert_file(args.src, args.dst, head=args.head, freeze_backbone=args.freeze_backbone,
                           image_size=args.image_size, force=args.force)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
