"""What a registered backbone is, framework-free: :class:`BackboneSpec`, and the torch key layouts its
families share (``odir_core.model.families``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from odir_core.data.normalization import IMAGENET_MEAN, IMAGENET_STD

NORM_PARAMETERS = ("weight", "bias", "running_mean", "running_var")  # a torch BatchNorm's keys, counter aside
TORCHVISION_URL = "https://download.pytorch.org/models/"


@dataclass(frozen=True)
class BackboneSpec:
    """One backbone: how each framework builds it, what it outputs, which weights it takes.

    ``family``: its family's name in ``odir_core.model.families.FAMILIES`` (Keras:
    ``keras_odir.families.BUILDERS``); ``torchvision``: the constructor in ``torchvision.models``;
    ``classifier``: the torchvision module
    replaced by ``Identity`` (its keys are not part of the backbone); ``imagenet_checkpoints``:
    torchvision's file names and URLs, preferred first; ``gradcam_stage``: the torchvision module whose
    output (the last feature map, the input of the global pooling) Grad-CAM explains; ``mean``/``std``:
    the input normalisation its weights expect; ``blocks``/``bottleneck``: the family's depth settings;
    ``widths``: channels per stage (ConvNeXt); ``width_mult``/``depth_mult``: EfficientNet's scaling of B0's
    channels and blocks; ``dropout``: the dropout before torchvision's replaced Linear, kept in the backbone
    (EfficientNet); ``stochastic_depth``: torchvision's ``stochastic_depth_prob``, which each block scales
    by its depth; ``patch_size``/``heads``/``mlp_dim``/``image_size``: a Vision Transformer's patch side,
    attention heads, MLP width and the input size its position embeddings are for (``blocks``: its depth;
    0 for the convolutional families);
    ``map_relu``: a ReLU follows ``gradcam_stage`` inside torchvision's ``forward`` (functional, so not
    part of that module's output), before the pooling; ``map_norm``: the torchvision module after the
    pooling that normalises each feature vector (ConvNeXt's ``classifier.0``), which a head on feature
    maps applies at every position of the map instead; ``earlier_stages``: the torchvision modules ending
    the earlier resolutions, early to late, which Grad-CAM explains instead when the last feature map is
    too small (``odir_core.evaluation.inference.choose_gradcam_stage``); ``renamed_keys``: (pattern,
    replacement) regular expressions turning the key names of older torchvision checkpoints into today's;
    ``state_keys``: its torchvision state_dict keys, classifier and ``num_batches_tracked`` aside.

    A backbone that is not torchvision's (``torchvision`` empty) names its key ``layout`` (``"timm"``: timm's
    module names) and may pool differently (``global_pool``: a Vision Transformer's features are the mean of its
    patch tokens, then the LayerNorm ``fc_norm``, instead of its class token after the final norm);
    ``ignored_keys``: regular expressions of the keys its published checkpoints hold that the backbone does not
    use (a pretraining decoder); ``weights_source``: where its weights are published, for a backbone without
    a torchvision ImageNet file (``imagenet_checkpoints`` empty).
    """

    name: str
    family: str
    features: int
    torchvision: str
    classifier: str
    imagenet_checkpoints: dict[str, str]
    gradcam_stage: str
    earlier_stages: tuple[str, ...] = ()
    blocks: tuple[int, ...] = ()
    bottleneck: bool = False
    widths: tuple[int, ...] = ()
    width_mult: float = 1.0
    depth_mult: float = 1.0
    dropout: float = 0.0
    stochastic_depth: float = 0.0
    patch_size: int = 0
    heads: int = 0
    mlp_dim: int = 0
    image_size: int = 0
    mean: tuple[float, ...] = tuple(IMAGENET_MEAN.tolist())
    std: tuple[float, ...] = tuple(IMAGENET_STD.tolist())
    map_relu: bool = False
    map_norm: str = ""
    renamed_keys: tuple[tuple[str, str], ...] = ()
    layout: str = "torchvision"
    global_pool: bool = False
    ignored_keys: tuple[str, ...] = ()
    weights_source: str = ""
    state_keys: frozenset[str] = field(default=frozenset(), repr=False)


def norm_keys(prefix: str) -> list[str]:
    """The keys of the torch BatchNorm at ``prefix`` (``num_batches_tracked`` aside)."""
    return [f"{prefix}.{p}" for p in NORM_PARAMETERS]


def keras_layer_name(torch_path: str) -> str:
    """The Keras layer name of the torchvision module at ``torch_path`` (``layer1.0.conv1`` -> ``layer1_0_conv1``)."""
    return torch_path.replace(".", "_")
