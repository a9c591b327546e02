"""Backbone features of images: extraction in batches over the local devices, spread over
processes, cached on disk under a key of the backbone and the images (`extract`)."""

from diva_jax.features.extract import *  # noqa: F401,F403
from diva_jax.features.extract import __all__  # noqa: F401
