"""Data, the bottom layer: the dataset registry (registry.py), the built-in datasets (location, download with
checksums, loading), pixels as a model sees them (binarization.py: binarization, the cs236 subsets), the user's own images (user.py), the file formats they come
in, and image tiling. Nothing here knows about models."""

from .binarization import (CS236_TEST_POSITIONS, CS236_TRAIN_LABELLED_POSITIONS, binarize, binarize_batch, binarized_test_set,
                           cs236_test_subset, model_input, subset_indices)
from .datasets import (DATASET_NAMES, DATASETS, DatasetSpec, ImageSet, default_cache_dir, download, factor_data, file_digest,
                       image_shape_of, load, locate, resolve_data_root)
from .formats import read_idx, read_svhn_mat, write_idx
from .images import image_grid
from .registry import REGISTRY, Dataset, dataset_for, is_path, load_for, lookup, register_dataset
from .user import UserImages
from . import cifar  # registers cifar10
from . import static_mnist  # registers static-mnist
from . import matlab_sets  # registers omniglot, caltech101, frey
from . import celeba  # registers celeba

__all__ = ["CS236_TEST_POSITIONS", "CS236_TRAIN_LABELLED_POSITIONS", "DATASET_NAMES", "DATASETS", "DatasetSpec", "ImageSet", "binarize",
           "binarize_batch", "binarized_test_set", "cs236_test_subset", "default_cache_dir", "download", "factor_data", "file_digest", "image_shape_of",
           "load", "locate", "model_input", "resolve_data_root", "subset_indices", "read_idx", "read_svhn_mat", "write_idx", "image_grid",
           "REGISTRY", "Dataset", "dataset_for", "is_path", "load_for", "lookup", "register_dataset", "UserImages"]
