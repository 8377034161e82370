"""Write a synthetic angiogram-like vessel dataset to try vesselctl without real data.

Usage:
    python examples/make_synthetic_dataset.py OUT_DIR [--count 40] [--seed 0]
        [--sizes 512 800] [--embed-every 5] [--patients 10] [--form labelme|masks]

``labelme`` (default) writes one LabelMe JSON per image (vessel polygons plus ``hole`` polygons
inside loops; every ``--embed-every``-th image embedded in ``imageData`` instead of a file);
``masks`` writes ``images/`` + ``masks/`` PNG pairs. File names carry a patient id
(``P003_img0042``), so ``--group-pattern '^(P\\d+)_'`` keeps patients in one split.
The same arguments always give the same files.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vesselctl.data.synthetic import write_labelme_dataset, write_mask_folder_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="folder to write (created; must be empty)")
    parser.add_argument("--count", type=int, default=40, help="number of images")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[512, 800], help="square sizes, used in turn"
    )
    parser.add_argument(
        "--embed-every", type=int, default=5, help="embed every Nth image in the JSON (0: never)"
    )
    parser.add_argument("--patients", type=int, default=10, help="distinct patient ids")
    parser.add_argument("--form", choices=["labelme", "masks"], default="labelme")
    args = parser.parse_args()

    if args.out_dir.exists() and any(args.out_dir.iterdir()):
        sys.exit(f"error: {args.out_dir} is not empty; choose an empty or new folder")
    started = time.perf_counter()
    if args.form == "labelme":
        write_labelme_dataset(
            args.out_dir, args.count, args.seed, args.sizes, args.embed_every, args.patients
        )
    else:
        write_mask_folder_dataset(args.out_dir, args.count, args.seed, args.sizes, args.patients)
    elapsed = time.perf_counter() - started
    print(f"wrote {args.count} synthetic {args.form} samples to {args.out_dir} in {elapsed:.1f} s")


if __name__ == "__main__":
    main()
