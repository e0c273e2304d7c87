"""Reading a folder of your own images: the first time (decoded and cached) and the cached start after it.

  python bench/image_folder.py --data-dir DATA [--work DIR] [--repeats 3] [--out FILE]

Writes MNIST's 60,000 training images as 28 x 28 PNG files in ten class sub-folders under WORK/pngs (once;
kept for later runs), then, each in a fresh interpreter with its cache in WORK/cache:

  import   `from vaelab import data` alone (the interpreter and torch's start-up), the floor under any command
  first    data.load(FOLDER) with an empty cache: lists, decodes in a thread pool, writes the cache entry
  cached   data.load(FOLDER) again (--repeats times): lists and stats the files, reads and checks the cached array

and reports each one's wall time (interpreter included) and the time inside data.load. The machine should
be otherwise idle; docs/performance.md gives the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

TIMED_LOAD = """
import json, sys, time
start = time.perf_counter()
from vaelab import data
imported = time.perf_counter()
images = data.load(sys.argv[1], "train")
done = time.perf_counter()
print(json.dumps({"import_s": imported - start, "load_s": done - imported, "images": len(images)}))
"""


def write_pngs(data_dir: str, folder: Path) -> None:
    """MNIST's training images as PNG files, one sub-folder per digit (the ImageFolder layout)."""
    import numpy as np
    from PIL import Image

    from vaelab import data

    if (folder / ".complete").is_file():
        return
    train = data.load("mnist", "train", data_dir)
    images, labels = train.images.numpy(), train.labels.numpy()
    for digit in range(10):
        (folder / str(digit)).mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(images.reshape(-1, 28, 28), labels)):
        Image.fromarray(np.ascontiguousarray(image)).save(folder / str(label) / f"{i:05d}.png")
    (folder / ".complete").write_text(f"{len(images)}\n")


def timed(code: str, *args: str, env: dict) -> dict:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=True)
    wall = time.perf_counter() - start
    result = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else {}
    return {"wall_s": round(wall, 3), **{k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True, help="a data root holding mnist/")
    parser.add_argument("--work", type=Path, default=Path("/tmp/vaelab-image-folder-bench"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="also write the results here as JSON")
    args = parser.parse_args()

    folder, cache = args.work / "pngs", args.work / "cache"
    write_pngs(args.data_dir, folder)
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "OMP_NUM_THREADS": "1"}
    results = {"files": 60_000, "cpus": os.cpu_count(), "load_average": os.getloadavg()[0],
               "import": timed("from vaelab import data", env=env),
               "first": timed(TIMED_LOAD, str(folder), env=env),
               "cached": [timed(TIMED_LOAD, str(folder), env=env) for _ in range(args.repeats)]}
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
