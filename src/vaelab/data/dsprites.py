"""A dSprites-style dataset (Matthey et al. 2017) generated in code: 64 x 64 binary images of one shape whose five
generative factors are known, every combination once:

    shape        3   square, ellipse, heart
    scale        6   0.5 .. 1 (linearly)
    orientation 40   k 2 pi / 40, k = 0 .. 39 (in [0, 2 pi), as docs/reference.md section 3)
    position x  32   0 .. 1 (linearly), the shape's centre from 15 to 49 pixels
    position y  32   0 .. 1

737,280 images, index = the factors' row-major index (shape slowest, position y fastest), so an image's factors
follow from its index and need no storage. A shape at scale 1 spans 20 pixels (the square's side, the ellipse's
long axis); a pixel is on when its centre lies inside the rotated shape. The images are rendered once (2.3
minutes on 2 CPU cores, with a progress bar on a terminal and a line at start and end), packed 8 pixels to a byte in
the cache folder (CACHE_DIR/dsprites/, data/caches.py: 377 MB) with their sha256 beside them, and checked against it
whenever read; a cache left in DATA_ROOT/dsprites/ by earlier versions is read from there. SIGINT or SIGTERM stops
the rendering at once, and no partial file is left. Splits: test = 10,000 images drawn with a fixed seed, train =
the other 727,280. Labels are the shape (0, 1, 2); `factors` carries all five.

The images stay packed wherever they are held (a split, the factor data of the metrics): unpacked they would be 3 GB
as uint8 and 12 GB as floats; batches are unpacked as they are drawn.

Colour dSprites (`color-dsprites`, disentanglement_lib's ColorDSprites): the same images, (3, 64, 64), each sprite
drawn in one colour on black. disentanglement_lib draws the colour uniform in [0.5, 1] per channel and image; here
each channel is uniform over the 8-bit levels 128..255 (the same range at 8 bits), a function of the image's index
alone (`colours_of`), so an image has the same colour in every split, subset and in the metrics' factor data. The
colour is not a factor. Held as the packed masks plus (N, 3) uint8 colours (2 MB for the full set; the images
would be 9 GB), coloured a batch at a time (`ImageSet.colours`).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import signal
import threading
import time
from pathlib import Path

import numpy as np

from ..errors import DataError, TrainingInterrupted
from ..progress import note, progress_bar
from .caches import cache_dir, write_atomically
from .checksums import file_digest

FACTOR_NAMES = ("shape", "scale", "orientation", "position_x", "position_y")
FACTOR_SIZES = (3, 6, 40, 32, 32)
SHAPES = ("square", "ellipse", "heart")
SIZE = 64
IMAGES = math.prod(FACTOR_SIZES)
TEST_IMAGES = 10_000
CACHE_NAME = "dsprites-64x64-v1.npy"
HALF_SIDE = 10.0  # pixels, at scale 1
MARGIN = 15.0  # the centre's distance from the border at position 0 (a rotated square reaches 10 * sqrt(2) = 14.1)


def factor_values() -> dict[str, np.ndarray]:
    """The value each factor index stands for."""
    return {"shape": np.arange(3), "scale": np.linspace(0.5, 1.0, 6), "orientation": np.linspace(0.0, 2 * np.pi, 40, endpoint=False),
            "position_x": np.linspace(0.0, 1.0, 32), "position_y": np.linspace(0.0, 1.0, 32)}


def factors_of(index: np.ndarray) -> np.ndarray:
    """Factor indices (n, 5) of images by their index in the full set."""
    return np.stack(np.unravel_index(np.asarray(index), FACTOR_SIZES), axis=1)


def index_of(factors: np.ndarray) -> np.ndarray:
    """The full set's index of each row of factor indices (n, 5)."""
    return np.ravel_multi_index(tuple(np.asarray(factors).T), FACTOR_SIZES)


def _inside(shape: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Whether points (a, b), in units of the half-side, rotated into the shape's frame, lie in the shape."""
    if shape == 0:
        return (np.abs(a) <= 1) & (np.abs(b) <= 1)
    if shape == 1:
        return a**2 + (b / 0.5) ** 2 <= 1
    x, y = 1.25 * a, -1.25 * b + 0.25  # the classic heart curve (x^2 + y^2 - 1)^3 <= x^2 y^3, point down
    return (x**2 + y**2 - 1) ** 3 <= x**2 * y**3


def render(factors: np.ndarray) -> np.ndarray:
    """Images (n, 64, 64) uint8 in {0, 255} for factor indices (n, 5)."""
    factors = np.asarray(factors)
    values = factor_values()
    centre = (np.arange(SIZE) + 0.5)[None, :]
    out = np.zeros((len(factors), SIZE, SIZE), dtype=np.uint8)
    for shape in range(3):
        rows = np.flatnonzero(factors[:, 0] == shape)
        if not len(rows):
            continue
        f = factors[rows]
        radius = (values["scale"][f[:, 1]] * HALF_SIDE)[:, None, None]
        angle = values["orientation"][f[:, 2]][:, None, None]
        cx = (MARGIN + values["position_x"][f[:, 3]] * (SIZE - 2 * MARGIN))[:, None, None]
        cy = (MARGIN + values["position_y"][f[:, 4]] * (SIZE - 2 * MARGIN))[:, None, None]
        dx, dy = centre[:, None, :] - cx, centre[:, :, None] - cy  # (n, 1, W), (n, H, 1)
        cos, sin = np.cos(angle), np.sin(angle)
        a, b = (cos * dx + sin * dy) / radius, (-sin * dx + cos * dy) / radius
        out[rows] = np.where(_inside(shape, a, b), np.uint8(255), np.uint8(0))
    return out


def generate(chunk: int = 1024) -> np.ndarray:
    """All 737,280 images, packed: (N, 512) uint8, 8 pixels a byte, in index order; a progress bar on a terminal."""
    packed = np.empty((IMAGES, SIZE * SIZE // 8), dtype=np.uint8)
    bar = progress_bar(total=IMAGES, desc="rendering dSprites", unit="image", unit_scale=True, leave=False, disable=None)
    with bar:
        for start in range(0, IMAGES, chunk):
            index = np.arange(start, min(start + chunk, IMAGES))
            packed[index] = np.packbits(render(factors_of(index)).reshape(len(index), -1) > 0, axis=1)
            bar.update(len(index))
    return packed


ROW_BYTES = SIZE * SIZE // 8
READ_ROWS = 8192
"""Rows read from the cache at a time (4 MB)."""


def cache_folder() -> Path:
    """Where the rendered images are cached: CACHE_DIR/dsprites."""
    return cache_dir() / "dsprites"


@contextlib.contextmanager
def _stopped_by_signals(what: str):
    """SIGINT and SIGTERM stop `what` at once with TrainingInterrupted (exit code 130 / 143), where training's own
    handlers would only ask it to stop after its next step; the handlers before are restored after. Only in the main
    thread (Python allows no other), and not for a signal that is ignored (a job started in the background)."""
    def stop(signum, frame):
        raise TrainingInterrupted(f"{signal.Signals(signum).name} while {what}: nothing was cached", signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        previous = {s: h for s, h in previous.items() if h not in (signal.SIG_IGN, None)}  # None: not set from Python
    try:
        for signum in previous:
            signal.signal(signum, stop)
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _render_into(folder: Path) -> np.ndarray:
    """generate(), written to folder/CACHE_NAME with its sha256 (the sha256 first: an image file without one is refused)."""
    path, started = folder / CACHE_NAME, time.perf_counter()
    note(f"rendering dSprites ({IMAGES:,} images, once: a few minutes) into {path}")
    with _stopped_by_signals(f"rendering dSprites into {path}"):
        packed = generate()

        def save(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.save(f, packed)
            write_atomically(folder / (CACHE_NAME + ".sha256"), lambda sums: sums.write_text(file_digest(tmp) + "\n"))

        write_atomically(path, save)
    note(f"dSprites cached in {path} ({path.stat().st_size / 1e6:.0f} MB, {time.perf_counter() - started:.0f} s)")
    return packed


def cached(folder: Path, rows: np.ndarray | None = None, earlier: Path | None = None) -> np.ndarray:
    """The packed images (N, 512) from folder/CACHE_NAME, or only `rows` (sorted indices), rendered and written there
    first if absent; read from `earlier`/CACHE_NAME instead where that holds them (a cache of an earlier version, never
    written). A file that does not match its sha256 is refused naming it."""
    for place in (folder, earlier):
        if place is not None and (place / CACHE_NAME).is_file():
            return _read_checked(place, rows)
    packed = _render_into(folder)
    if rows is None:
        return packed
    del packed  # read back below: holding the whole set beside a split would double the memory
    return _read_checked(folder, rows)


def _read_checked(folder: Path, rows: np.ndarray | None) -> np.ndarray:
    """One pass over folder/CACHE_NAME: its sha256 and the rows asked for, so a split never needs the whole set in memory."""
    path, checksum = folder / CACHE_NAME, folder / (CACHE_NAME + ".sha256")
    refused = DataError(f"{path}: does not match {checksum.name} (damaged?); delete both to generate them again")
    if not checksum.is_file():
        raise refused
    expected = checksum.read_text().strip()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f"npy version {version}")
            shape, fortran, dtype = read_header(f)
        except ValueError:
            raise refused from None
        if shape != (IMAGES, ROW_BYTES) or dtype != np.uint8 or fortran:
            raise DataError(f"{path}: expected uint8 of shape ({IMAGES}, {ROW_BYTES}), found {dtype} {shape}")
        header = f.tell()
        f.seek(0)
        digest.update(f.read(header))
        out = np.empty((IMAGES if rows is None else len(rows), ROW_BYTES), dtype=np.uint8)
        buffer = np.empty((READ_ROWS, ROW_BYTES), dtype=np.uint8)
        for start in range(0, IMAGES, READ_ROWS):
            n = min(READ_ROWS, IMAGES - start)
            block = out[start : start + n] if rows is None else buffer[:n]
            if f.readinto(memoryview(block).cast("B")) != block.nbytes:
                raise refused
            digest.update(block)
            if rows is not None:
                lo, hi = np.searchsorted(rows, (start, start + n))
                out[lo:hi] = block[rows[lo:hi] - start]
        digest.update(f.read())  # trailing bytes change the digest too
    if digest.hexdigest() != expected:
        raise refused
    return out


def split_indices(split: str) -> np.ndarray:
    """Indices of a split in the full set: test = TEST_IMAGES drawn with seed 0, train = the rest, both sorted."""
    test = np.sort(np.random.default_rng(0).choice(IMAGES, TEST_IMAGES, replace=False))
    if split == "test":
        return test
    if split == "train":
        return np.setdiff1d(np.arange(IMAGES), test, assume_unique=True)
    raise DataError(f"unknown split {split!r} of dsprites (choose from train, test)")


def unpack(rows: np.ndarray) -> np.ndarray:
    """Packed rows (n, 512) as images (n, 64, 64) uint8 in {0, 255}."""
    images = np.unpackbits(rows, axis=1).reshape(len(rows), SIZE, SIZE)
    images *= np.uint8(255)
    return images


def load_split(data_folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(packed images (n, 512) uint8, 8 pixels a byte as `unpack` reads them, factors (n, 5) int64) of a split, from the
    cache folder (or a cache earlier versions left in `data_folder`, DATA_ROOT/dsprites)."""
    index = split_indices(split)
    return cached(cache_folder(), index, data_folder), factors_of(index).astype(np.int64, copy=False)


class Factors:
    """The generative factors of the full set as the disentanglement metrics sample them (evaluation/disentanglement.py):
    factor values uniform and independent, and the image each combination makes, read from the cache (held packed)."""

    factor_sizes = FACTOR_SIZES
    factor_names = FACTOR_NAMES

    def __init__(self, data_folder: Path):
        self.packed = cached(cache_folder(), earlier=data_folder)

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.stack([rng.integers(size, size=n) for size in FACTOR_SIZES], axis=1)

    def observations(self, factors: np.ndarray) -> np.ndarray:
        """Images (n, 64, 64) uint8 in {0, 255} for factor indices (n, 5)."""
        return unpack(self.packed[index_of(factors)])


COLOUR_SEED = 0xC0105
"""The fixed seed of colour dSprites' colours."""


def colours_of(index: np.ndarray) -> np.ndarray:
    """Colour dSprites' colour of images by their index in the full set: (n, 3) uint8, each channel in 128..255.

    A splitmix64 hash of (seed, index, channel) rather than a random generator's stream: it is the same for any
    subset of indices and does not depend on numpy's generator versions."""
    with np.errstate(over="ignore"):  # wrapping uint64 arithmetic is the hash
        z = (np.asarray(index, dtype=np.uint64).reshape(-1, 1) * np.uint64(3) + np.arange(3, dtype=np.uint64)
             + np.uint64(COLOUR_SEED) * np.uint64(0x9E3779B97F4A7C15))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return (np.uint64(128) + (z >> np.uint64(57))).astype(np.uint8)  # the top 7 bits: 128 levels


def colour(rows: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Packed rows (n, 512) drawn in `colours` (n, 3) uint8 on black: images (n, 3, 64, 64) uint8."""
    mask = np.unpackbits(rows, axis=1)
    return (mask[:, None, :] * colours[:, :, None]).reshape(len(rows), 3, SIZE, SIZE)


class ColourFactors(Factors):
    """Colour dSprites' factors for the metrics: dSprites' five, each image in its own colour (`colours_of`)."""

    def observations(self, factors: np.ndarray) -> np.ndarray:
        """Images (n, 3, 64, 64) uint8 for factor indices (n, 5)."""
        index = index_of(factors)
        return colour(self.packed[index], colours_of(index))
