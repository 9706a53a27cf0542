"""``python -m keras_odir.convert SRC DST``: a dual model between a torch ``.pth`` and a keras_odir
``.keras``, in the direction given by the suffixes (the weight table is ``keras_odir.weights``).

A ``.pth`` may be torch_odir's (``best.pth``) or the study's own (``classifier.*`` head keys);
its backbone and head are read from its keys. A ``.pth`` of a backbone alone (a torchvision checkpoint,
RETFound's published file) becomes a Keras backbone (images -> features) and back, its backbone read from its
keys (``odir_core.model.checkpoints.published_backbone``). What the model was trained on
(``odir_core.model.provenance``) goes with it: a ``.pth`` that records it becomes torch_odir's
``{"state_dict", "trained_on"}``, otherwise a bare state_dict.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from keras_odir.model import build_backbone, dual_model_from_state
from keras_odir.parts import is_dual_model
from keras_odir.weights import (
    WeightConversionError,
    keras_to_torch_state,
    read_keras_model,
    read_torch_state,
    to_numpy,
    torch_load,
    torch_to_keras_state,
)
from odir_core.atomic import atomic_path
from odir_core.errors import InputError, OutputExistsError, run_cli, writing
from odir_core.model import provenance
from odir_core.model.checkpoints import (
    KERAS_SUFFIX,
    TORCH_SUFFIXES,
    backbone_state_dict,
    check_finite,
    dual_state_dict,
    is_dual_state,
    published_backbone,
)
from odir_core.model.model_spec import (
    BACKBONES,
    HEADS,
    BackboneSpec,
    HeadSpec,
    backbone_spec,
    head_spec,
    infer_architecture,
    infer_backbone,
)
from odir_core.cli_config import add_config_option, parse_with_config


def convert_file(src: str | os.PathLike, dst: str | os.PathLike, *, backbone: BackboneSpec | str | None = None,
                 head: HeadSpec | str | None = None, fine_tune: bool = True, image_size: int | None = None,
                 force: bool = False) -> Path:
    """Convert a dual model's ``.pth`` into a keras_odir ``.keras`` or back; returns ``dst``. ``backbone``,
    ``head`` (specs or registered names): refuse a model that holds others; ``fine_tune`` False builds the
    Keras model with a frozen backbone."""
    backbone = None if backbone is None else backbone_spec(backbone)
    head = None if head is None else head_spec(head)
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"{src} does not exist.")
    if dst.exists() and not force:
        raise OutputExistsError(f"{dst} exists; choose another name or pass --force to overwrite it.")
    directions = {(s, KERAS_SUFFIX) for s in TORCH_SUFFIXES} | {(KERAS_SUFFIX, s) for s in TORCH_SUFFIXES}
    if (src.suffix, dst.suffix) not in directions:
        raise InputError(f"Convert between .pth/.pt and .keras; got {src.name} -> {dst.name}.")
    if dst.suffix == KERAS_SUFFIX:
        state = dual_state_dict(read_torch_state(src))
        check_finite(((k, to_numpy(v)) for k, v in state.items()), str(src))
        if is_dual_state(state):
            _check_requested(state, src, backbone, head)
            model = dual_model_from_state(state, source=str(src), freeze_backbone=not fine_tune,
                                          image_size=image_size)
        else:
            model = _backbone_from_state(state, src, backbone, image_size)
        trained_on = provenance.read(src, torch_load)
        with writing(dst), atomic_path(dst) as tmp:
            model.save(tmp)
            if trained_on:
                provenance.write_keras(tmp, trained_on)
    else:
        import torch

        model = read_keras_model(src)
        state = keras_to_torch_state(model)
        check_finite(((k, v.numpy()) for k, v in state.items()), str(src))
        if is_dual_model(model):
            _check_requested(state, src, backbone, head)
        else:
            _check_backbone(infer_backbone(state), src, backbone)
        trained_on = provenance.read(src)
        with writing(dst), atomic_path(dst) as tmp:  # a bare state_dict, or torch_odir's layout with the record
            torch.save({"state_dict": state, provenance.TORCH_KEY: trained_on} if trained_on else state, tmp)
    return dst


def _backbone_from_state(state: dict, src: Path, backbone: BackboneSpec | None, image_size: int | None):
    """The Keras backbone holding a backbone file's weights (a Vision Transformer's input fixed to ``image_size``,
    by default the size its position embeddings are for)."""
    spec = published_backbone(state)
    _check_backbone(spec, src, backbone)
    size = image_size or (spec.image_size if spec.patch_size else None)
    model = build_backbone(spec, (size, size, 3))
    return torch_to_keras_state(model, backbone_state_dict(state, spec), source=str(src))


def _check_backbone(found: BackboneSpec, src: Path, backbone: BackboneSpec | None) -> None:
    if backbone is not None and backbone != found:
        raise WeightConversionError(f"{src} holds backbone {found.name}, not the requested {backbone.name}.")


def _check_requested(state: dict, src: Path, backbone: BackboneSpec | None, head: HeadSpec | None) -> None:
    """Refuse a model whose backbone or head is not the requested one (None: any)."""
    found_backbone, found_head = infer_architecture(state)
    _check_backbone(found_backbone, src, backbone)
    if head is not None and head != found_head:
        raise WeightConversionError(f"{src} holds head {found_head.name}, not the requested {head.name}.")


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m keras_odir.convert",
        description="Convert a dual model between a torch state_dict (.pth/.pt: torch_odir's or the study's "
                    "own) and a keras_odir model (.keras), in the direction given by the file suffixes; "
                    "backbone and head are read from the checkpoint. A backbone's own file (a torchvision "
                    "checkpoint, RETFound's published weights) becomes a Keras backbone, and back. Every flag is also a key of --config FILE.toml.")
    add_config_option(parser)
    parser.add_argument("src", type=Path, help="input file: a torch_odir or study .pth/.pt, a backbone's .pth "
                        "(torchvision's, RETFound's), or a keras_odir .keras")
    parser.add_argument("dst", type=Path, help="output file: .keras when SRC is .pth/.pt, .pth/.pt when SRC is .keras")
    parser.add_argument("--backbone", choices=tuple(BACKBONES),
                        help="fail unless the model holds this backbone (default: detected)")
    parser.add_argument("--head", choices=tuple(HEADS), help="fail unless the model holds this head (default: detected)")
    parser.add_argument("--fine-tune", action=argparse.BooleanOptionalAction, default=True,
                        help="torch -> keras: build the Keras model with a trainable backbone (default), or with "
                        "--no-fine-tune a frozen one (BatchNorm in inference mode), as training's fine_tune")
    parser.add_argument("--image-size", type=int, default=None,
                        help="torch -> keras: fix the Keras input size to N x N (default: any size; a Vision "
                        "Transformer's backbone alone: the size its position embeddings are for)")
    parser.add_argument("--force", action="store_true", help="overwrite DST when it exists")
    args = parse_with_config(parser, argv)

    def convert() -> None:
        out = convert_file(args.src, args.dst, backbone=args.backbone, head=args.head, fine_tune=args.fine_tune,
                           image_size=args.image_size, force=args.force)
        print(f"wrote {out}")

    return run_cli(convert)


if __name__ == "__main__":
    sys.exit(main())
