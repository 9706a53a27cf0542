"""The dual-eye model as data (framework-free): a head registry (layer lists) and a backbone registry.

``keras_odir.model`` and ``torch_odir.model`` both build from these declarations, and both
read a checkpoint's architecture from its keys alone (:func:`infer_architecture`). A dual
model is one backbone shared by both eyes, its pooled features concatenated [left, right],
then a head ending in ``NUM_LABELS`` logits. A torch state_dict of it holds
``backbone.`` + the torchvision model's own keys (only its classifier removed) and
``head.<i>.weight|bias`` for the i-th layer of the head.

Adding a backbone of a registered family: one entry in ``BACKBONES``; a new family: one module in
``odir_core.model.families`` and its Keras builder in ``keras_odir.families``. Adding a head: one
:class:`HeadSpec` in ``HEADS``. A name is resolved once, where it enters (a config, a command line): the
resolvers :func:`backbone_spec` and :func:`head_spec` look it up (and return a spec unchanged), and
from there the spec objects are passed down (``keras_odir.model``, ``torch_odir.model``, the checkpoint
helpers), so a spec outside the registries builds too; :func:`infer_architecture` reads the registered
specs from a state_dict's keys.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from odir_core.errors import InputError
from odir_core.labels import NUM_LABELS
from odir_core.model.backbone import TORCHVISION_URL, BackboneSpec, keras_layer_name
from odir_core.model.families import convnext, densenet, efficientnet, resnet, vit


@dataclass(frozen=True)
class Linear:
    """A fully connected layer with bias (torch ``nn.Linear`` init); the last one of a head gives the logits."""

    units: int = NUM_LABELS


@dataclass(frozen=True)
class ReLU:
    """max(x, 0)."""


@dataclass(frozen=True)
class Dropout:
    """Dropout with drop probability ``rate`` (training only)."""

    rate: float


@dataclass(frozen=True)
class CrossEyeCorrelation:
    """Cross-eye spatial correlation (no weights): the first layer of a head that works on both eyes' last
    feature maps (before pooling) instead of their pooled features; it outputs [left, right] features.

    With the left map as ``L`` (N positions x C channels, N = H x W) and the right as ``R`` (M x C)::

        S     = L R^T / sqrt(C)                        (N x M: every left position against every right one)
        L_agg = softmax_rows(S) R                      (N x C: the right map, aggregated for each left position)
        R_agg = softmax_rows(S^T) L                    (M x C: and the other way round)
        out   = [mean_N(L + L_agg), mean_M(R + R_agg)]  (2C)

    After the spatial correlation module of DCNet (Li et al., "Dense Correlation Network for Automated
    Multi-Label Ocular Disease Detection with Paired Colour Fundus Photographs", ISBI 2020), which relates
    each position of one eye's feature map to every position of the other's and fuses the result; here
    without learned projections, fused by addition and global average pooling.
    """


@dataclass(frozen=True)
class MLDecoder:
    """An ML-Decoder head on both eyes' last feature maps (Ridnik et al., "ML-Decoder: Scalable and Versatile
    Classification Head", WACV 2023), ending in ``units`` logits.

    Both eyes' maps are flattened to tokens, left then right (2N x C), embedded ``relu(Linear(C, dim))``, and
    one learned eye embedding (a ``dim``-vector per eye) is added to each eye's tokens. ``queries`` learned
    queries (dim each) go through one transformer decoder layer without self-attention::

        q   = LayerNorm1(queries + Dropout(CrossAttention(queries, tokens)))   (heads heads, dropout on weights)
        q   = LayerNorm2(q + Dropout(Linear(ff, dim)(Dropout(relu(Linear(dim, ff)(q))))))

    and a group fully connected layer: query k gives ``group = ceil(units / queries)`` logits through its own
    (dim x group) projection; the first ``units`` of the K x group outputs, plus a bias, are the logits.
    Its torch state keys under ``head.<i>.`` are :attr:`state_names`.
    """

    units: int = NUM_LABELS
    queries: int = NUM_LABELS
    dim: int = 256
    heads: int = 8
    ff: int = 1024
    dropout: float = 0.1

    def __post_init__(self):
        if self.dim % self.heads:
            raise ValueError(f"MLDecoder dim {self.dim} is not a multiple of its {self.heads} heads")
        if not 0 < self.queries <= self.units:
            raise ValueError(f"MLDecoder needs 1 to {self.units} queries for {self.units} logits, not {self.queries}")

    @property
    def group(self) -> int:
        """Logits per query."""
        return -(-self.units // self.queries)

    state_names = ("embed.weight", "embed.bias", "eye_embed", "query_embed",
                   "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias",
                   "norm1.weight", "norm1.bias", "ff1.weight", "ff1.bias", "ff2.weight", "ff2.bias",
                   "norm2.weight", "norm2.bias", "group_weight", "group_bias")


HeadLayer = Linear | ReLU | Dropout | CrossEyeCorrelation | MLDecoder
MAP_LAYERS = (CrossEyeCorrelation, MLDecoder)  # the layers that start a head on both eyes' feature maps


@dataclass(frozen=True)
class HeadSpec:
    """One head: its name, its layers (layer i is torch's ``head.<i>`` and Keras' ``head_<i>``) and the words
    ``--help`` shows for it."""

    name: str
    layers: tuple[HeadLayer, ...]
    description: str = field(default="", compare=False)

    @property
    def uses_maps(self) -> bool:
        """Whether it works on both eyes' feature maps (it starts with one of ``MAP_LAYERS``)."""
        return bool(self.layers) and isinstance(self.layers[0], MAP_LAYERS)

    @property
    def state_keys(self) -> frozenset[str]:
        """Its torch state_dict keys: ``head.<i>.weight|bias`` of each Linear, ``head.<i>.<name>`` for each
        name of an ``MLDecoder``'s ``state_names``."""
        names = {Linear: ("weight", "bias"), MLDecoder: MLDecoder.state_names}
        return frozenset(f"head.{i}.{p}" for i, layer in enumerate(self.layers) for p in names.get(type(layer), ()))


HEADS: dict[str, HeadSpec] = {head.name: head for head in (
    HeadSpec("v0", (Linear(),), "Linear(8)"),
    HeadSpec("v1", (Dropout(0.2), Linear()), "Dropout(0.2)+Linear(8)"),
    HeadSpec("v2", (Linear(128), ReLU(), Dropout(0.5), Linear(64), ReLU(), Dropout(0.5), Linear()),
             "MLP 128-64-8 (ReLU, Dropout 0.5)"),
    HeadSpec("scm", (CrossEyeCorrelation(), Dropout(0.2), Linear()),
             "cross-eye spatial correlation of the last feature maps + Dropout(0.2)+Linear(8)"),
    HeadSpec("mldecoder", (MLDecoder(),),
             "ML-Decoder: 8 label queries cross-attending both eyes' feature-map tokens (dim 256, 8 heads)"),
)}
HEAD_HELP = "classifier head: " + "; ".join(f"{head.name} {head.description}".strip() for head in HEADS.values())


def head_spec(head: str | HeadSpec) -> HeadSpec:
    """``head`` itself when it is a :class:`HeadSpec`, else the registry entry of that name."""
    if isinstance(head, HeadSpec):
        return head
    try:
        return HEADS[head]
    except KeyError:
        raise ValueError(f"Unknown head {head!r}; choose one of {', '.join(HEADS)}.") from None


BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": resnet.backbone("resnet18", (2, 2, 2, 2), False, {
        "resnet18-f37072fd.pth": TORCHVISION_URL + "resnet18-f37072fd.pth",  # IMAGENET1K_V1
    }),
    "resnet34": resnet.backbone("resnet34", (3, 4, 6, 3), False, {
        "resnet34-b627a593.pth": TORCHVISION_URL + "resnet34-b627a593.pth",  # IMAGENET1K_V1
    }),
    "resnet50": resnet.backbone("resnet50", (3, 4, 6, 3), True, {
        "resnet50-11ad3fa6.pth": TORCHVISION_URL + "resnet50-11ad3fa6.pth",  # IMAGENET1K_V2
        "resnet50-0676ba61.pth": TORCHVISION_URL + "resnet50-0676ba61.pth",  # IMAGENET1K_V1
    }),
    "resnet101": resnet.backbone("resnet101", (3, 4, 23, 3), True, {
        "resnet101-cd907fc2.pth": TORCHVISION_URL + "resnet101-cd907fc2.pth",  # IMAGENET1K_V2
        "resnet101-63fe2227.pth": TORCHVISION_URL + "resnet101-63fe2227.pth",  # IMAGENET1K_V1
    }),
    "densenet121": densenet.backbone("densenet121", (6, 12, 24, 16), 1024, {
        "densenet121-a639ec97.pth": TORCHVISION_URL + "densenet121-a639ec97.pth",  # IMAGENET1K_V1
    }),
    "efficientnet_b0": efficientnet.backbone("efficientnet_b0", 1.0, 1.0, 0.2, {
        "efficientnet_b0_rwightman-7f5810bc.pth": TORCHVISION_URL + "efficientnet_b0_rwightman-7f5810bc.pth",
    }),  # IMAGENET1K_V1
    "efficientnet_b3": efficientnet.backbone("efficientnet_b3", 1.2, 1.4, 0.3, {
        "efficientnet_b3_rwightman-b3899882.pth": TORCHVISION_URL + "efficientnet_b3_rwightman-b3899882.pth",
    }),  # IMAGENET1K_V1
    "convnext_tiny": convnext.backbone("convnext_tiny", (3, 3, 9, 3), (96, 192, 384, 768), 0.1, {
        "convnext_tiny-983f1562.pth": TORCHVISION_URL + "convnext_tiny-983f1562.pth",  # IMAGENET1K_V1
    }),
    "vit_b_16": vit.backbone("vit_b_16", 16, 12, 12, 768, 3072, {
        "vit_b_16-c867db91.pth": TORCHVISION_URL + "vit_b_16-c867db91.pth",  # IMAGENET1K_V1 (224 px)
        "vit_b_16_swag-9ac1b537.pth": TORCHVISION_URL + "vit_b_16_swag-9ac1b537.pth",  # IMAGENET1K_SWAG_E2E_V1 (384)
        "vit_b_16_lc_swag-4e70ced5.pth": TORCHVISION_URL + "vit_b_16_lc_swag-4e70ced5.pth",  # SWAG_LINEAR_V1 (224)
    }),
    "vit_l_16": vit.backbone("vit_l_16", 16, 24, 16, 1024, 4096, {
        "vit_l_16-852ce7e3.pth": TORCHVISION_URL + "vit_l_16-852ce7e3.pth",  # IMAGENET1K_V1 (224 px)
        "vit_l_16_swag-4f3808c9.pth": TORCHVISION_URL + "vit_l_16_swag-4f3808c9.pth",  # IMAGENET1K_SWAG_E2E_V1 (512)
        "vit_l_16_lc_swag-4d563306.pth": TORCHVISION_URL + "vit_l_16_lc_swag-4d563306.pth",  # SWAG_LINEAR_V1 (224)
    }),
    # RETFound (Zhou et al., Nature 2023): timm's ViT-L/16, global average pooling of the patch tokens + fc_norm;
    # its MAE-pretrained file holds the encoder, the MAE decoder and mask token (ignored) and the encoder's final
    # norm (not used with global pooling)
    "retfound": vit.timm_backbone("retfound", 16, 24, 16, 1024, 4096, ignored_keys=(
        r"decoder_", r"mask_token$", r"norm\."), weights_source=(
        "RETFound_cfp_weights.pth from github.com/rmaphoh/RETFound_MAE, or RETFound_mae_natureCFP.pth from "
        "huggingface.co/YukunZhou/RETFound_mae_natureCFP")),
}
DEFAULT_BACKBONE = "resnet50"


def backbone_spec(backbone: str | BackboneSpec) -> BackboneSpec:
    """``backbone`` itself when it is a :class:`BackboneSpec`, else the registry entry of that name."""
    if isinstance(backbone, BackboneSpec):
        return backbone
    try:
        return BACKBONES[backbone]
    except KeyError:
        raise ValueError(f"Unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}.") from None


def torch_module_paths() -> dict[str, str]:
    """Keras layer name -> torchvision module path, for every module of a registered backbone whose path holds an
    underscore (``encoder_layer_0``), where the name alone cannot tell; in any other name each ``_`` is a ``.``."""
    paths = (key.rpartition(".")[0] for spec in BACKBONES.values() for key in spec.state_keys)
    return {keras_layer_name(path): path for path in paths if "_" in path}


class ArchitectureError(InputError):
    """State-dict keys that match no registered backbone or head (the message says what was found)."""


def infer_backbone(keys: Iterable[str]) -> BackboneSpec:
    """The backbone whose torchvision keys (classifier and ``num_batches_tracked`` aside) are exactly ``keys``."""
    found = frozenset(k for k in keys if not k.endswith("num_batches_tracked"))
    for spec in BACKBONES.values():
        if found == spec.state_keys:
            return spec
    best = min(BACKBONES.values(), key=lambda spec: len(found ^ spec.state_keys))
    extra, missing = sorted(found - best.state_keys), sorted(best.state_keys - found)
    raise ArchitectureError(
        f"backbone keys match no backbone of {', '.join(BACKBONES)}; closest {best.name}: "
        f"{len(extra)} unknown (e.g. {', '.join(extra[:3]) or '-'}), {len(missing)} missing "
        f"(e.g. {', '.join(missing[:3]) or '-'})")


def infer_head(keys: Iterable[str]) -> HeadSpec:
    """The head whose ``head.*`` keys are exactly the ``head.*`` keys among ``keys``."""
    found = frozenset(k for k in keys if k.startswith("head."))
    for head in HEADS.values():
        if found == head.state_keys:
            return head
    layers = sorted({int(k.split(".")[1]) for k in found if k.split(".")[1].isdigit()})
    raise ArchitectureError(f"head layers {layers} match no head of {', '.join(HEADS)}")


def infer_architecture(keys: Iterable[str]) -> tuple[BackboneSpec, HeadSpec]:
    """(backbone, head) of a dual-model state_dict (keys ``backbone.*`` and ``head.*``)."""
    keys = list(keys)
    others = [k for k in keys if not k.startswith(("backbone.", "head."))]
    if others:
        raise ArchitectureError(f"not a dual-model state_dict: keys outside backbone.* and head.*, e.g. {others[:3]}")
    backbone = infer_backbone(k[len("backbone."):] for k in keys if k.startswith("backbone."))
    return backbone, infer_head(keys)


def check_architecture(keys: Iterable[str], backbone: str | BackboneSpec, head: str | HeadSpec,
                       source: str = "checkpoint") -> None:
    """Raise ``ArchitectureError`` unless a dual-model state_dict's keys hold ``backbone`` and ``head``
    (specs, or registered names)."""
    backbone, head = backbone_spec(backbone), head_spec(head)
    found_backbone, found_head = infer_architecture(keys)
    if (found_backbone, found_head) != (backbone, head):
        raise ArchitectureError(f"{source} holds backbone {found_backbone.name} with head {found_head.name}, not "
                                f"{backbone.name} with {head.name}: pass --backbone {found_backbone.name} "
                                f"--head {found_head.name}")
