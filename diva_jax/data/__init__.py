"""Real datasets (TFDS builders over wheels, or the TFDS catalog), a user's own data (image
folders, CSVs, embeddings: `user_data`), splits and label noise.

Importing this package registers the ``mnist5k``, ``digits`` and ``animal_mnist`` TFDS
builders.
"""
from diva_jax.data import glyphs
from diva_jax.data.builders import AnimalMnist
from diva_jax.data.builders import Digits
from diva_jax.data.builders import Mnist5k
from diva_jax.data.loading import LabelledImages
from diva_jax.data.loading import known_datasets
from diva_jax.data.loading import load
from diva_jax.data.multisource import MultiSourceDataset
from diva_jax.data.noise import NoisyLabels
from diva_jax.data.noise import class_conditional_label_noise
from diva_jax.data.noise import pairwise_transition
from diva_jax.data.noise import uniform_label_noise
from diva_jax.data.noise import uniform_transition
from diva_jax.data.splits import CorePoolSplit
from diva_jax.data.splits import core_pool_split
from diva_jax.data.splits import stratified_holdout_mask
from diva_jax.data.user_data import SkippedFile
from diva_jax.data.user_data import UserEmbeddings
from diva_jax.data.user_data import UserImages
from diva_jax.data.user_data import load_embeddings
from diva_jax.data.user_data import load_image_csv
from diva_jax.data.user_data import load_image_folder
from diva_jax.data.user_data import source_kind

__all__ = [
    "AnimalMnist", "CorePoolSplit", "glyphs", "Digits", "LabelledImages", "Mnist5k",
    "MultiSourceDataset", "NoisyLabels", "class_conditional_label_noise", "core_pool_split",
    "known_datasets", "load", "pairwise_transition", "stratified_holdout_mask",
    "uniform_label_noise", "uniform_transition", "SkippedFile", "UserEmbeddings", "UserImages",
    "load_embeddings", "load_image_csv", "load_image_folder", "source_kind",
]
