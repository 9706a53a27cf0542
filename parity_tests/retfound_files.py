"""RETFound's published checkpoint layout, written with random weights: ``{"model": state, "args": Namespace,
"epoch": int}`` (MAE's ``save_model``) where ``state`` holds
the MAE-pretrained encoder under timm's keys (``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.<i>``,
the encoder's final ``norm``; no ``head``, no ``fc_norm``) and the MAE decoder with the shapes of the ViT-L MAE's
(``decoder_embed`` 1024 -> 512, ``mask_token``, ``decoder_pos_embed``, 8 ``decoder_blocks`` of width 512 and 16
heads, ``decoder_norm``, ``decoder_pred`` 512 -> 16 * 16 * 3 pixels)."""

from __future__ import annotations

import argparse
import dataclasses
from functools import partial
from pathlib import Path

import torch
from timm.models.vision_transformer import Block

from odir_core.model.backbone import BackboneSpec
from odir_core.model.families import vit
from odir_core.model.families.vit import EPSILON, grid
from parity_helpers import trained_looking_vit
from torch_odir.vit import timm_vision_transformer

DECODER_DIM, DECODER_DEPTH, DECODER_HEADS = 512, 8, 16


def _decoder(spec: BackboneSpec) -> dict[str, torch.Tensor]:
    """The MAE decoder's tensors (random) under their keys in MAE's state_dict."""
    state = {"mask_token": torch.randn(1, 1, DECODER_DIM) * 0.02,
             "decoder_pos_embed": torch.randn(1, 1 + grid(spec) ** 2, DECODER_DIM)}
    modules = {"decoder_embed": torch.nn.Linear(spec.features, DECODER_DIM),
               "decoder_norm": torch.nn.LayerNorm(DECODER_DIM, eps=EPSILON),
               "decoder_pred": torch.nn.Linear(DECODER_DIM, spec.patch_size ** 2 * 3)}
    norm = partial(torch.nn.LayerNorm, eps=EPSILON)
    modules |= {f"decoder_blocks.{i}": Block(DECODER_DIM, DECODER_HEADS, 4.0, qkv_bias=True, norm_layer=norm)
                for i in range(DECODER_DEPTH)}
    for prefix, module in modules.items():
        state |= {f"{prefix}.{key}": value for key, value in module.state_dict().items()}
    return state


def encoder_state(spec: BackboneSpec, seed: int) -> dict[str, torch.Tensor]:
    """The MAE encoder of ``spec``: timm's VisionTransformer with its final ``norm`` (no pooling head), every
    tensor trained-looking (norm scales near 1, biases, class token and position embeddings that matter)."""
    torch.manual_seed(seed)
    encoder = timm_vision_transformer(dataclasses.replace(spec, global_pool=False))
    trained_looking_vit(encoder, vit.TOKEN_KEYS[vit.TIMM], seed)
    return dict(encoder.state_dict())


def write_mae_checkpoint(spec: BackboneSpec, path: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """Write RETFound's file layout for ``spec`` at ``path``; returns the encoder's tensors."""
    encoder = encoder_state(spec, seed)
    # as MAE's save_model writes it: the weights under "model", beside the training script's argparse arguments
    args = argparse.Namespace(model="vit_large_patch16", input_size=224, mask_ratio=0.75, norm_pix_loss=True)
    torch.save({"model": {**encoder, **_decoder(spec)}, "args": args, "epoch": 799}, path)
    return encoder
