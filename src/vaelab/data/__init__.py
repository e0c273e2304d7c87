"""Data, the bottom layer: datasets (location, download with checksums, loading, binarization, the
cs236 subsets), the file formats they come in, and image tiling. Nothing here knows about models."""

from .datasets import (CS236_TEST_POSITIONS, CS236_TRAIN_LABELLED_POSITIONS, DATASET_NAMES, DATASETS, DatasetSpec, ImageSet, binarize, model_input,
                       binarize_batch, binarized_test_set, cs236_test_subset, default_cache_dir, download, factor_data, file_digest,
                       image_shape_of, load, locate, resolve_data_root, subset_indices)
from .formats import read_idx, read_svhn_mat, write_idx
from .images import image_grid

__all__ = ["CS236_TEST_POSITIONS", "CS236_TRAIN_LABELLED_POSITIONS", "DATASET_NAMES", "DATASETS", "DatasetSpec", "ImageSet", "binarize",
           "binarize_batch", "binarized_test_set", "cs236_test_subset", "default_cache_dir", "download", "factor_data", "file_digest", "image_shape_of",
           "load", "locate", "model_input", "resolve_data_root", "subset_indices", "read_idx", "read_svhn_mat", "write_idx", "image_grid"]
