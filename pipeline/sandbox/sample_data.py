"""Regenerate sample_data/: `python -m pipeline.sandbox.sample_data [DIRECTORY [N [SEED]]]`."""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.sandbox.data import SAMPLE_SEED, SAMPLE_SIZE, generate_dataset, write_dataset


def main(argv: list[str]) -> int:
    directory = Path(argv[0]) if argv else Path("sample_data")
    size = int(argv[1]) if len(argv) > 1 else SAMPLE_SIZE
    seed = int(argv[2]) if len(argv) > 2 else SAMPLE_SEED
    write_dataset(generate_dataset(size, seed), directory)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
