"""Backbone families, framework-free: each module holds one family's spec constructor (``backbone``), its
torchvision key layout (``state_keys``) and its initialisation rules (``initial_weight(key, shape, rng, spec)``:
a tensor's starting value, or None where the family has no rule). The ``vit`` family also holds timm's layout
(RETFound).

A new family is one module here, listed in ``FAMILIES``, plus its Keras builder in ``keras_odir.families``;
its backbones are entries of ``odir_core.model.model_spec.BACKBONES``.
"""

from __future__ import annotations

from types import ModuleType

from odir_core.model.families import convnext, densenet, efficientnet, resnet, vit

FAMILIES: dict[str, ModuleType] = {module.NAME: module for module in (resnet, densenet, efficientnet, convnext, vit)}
