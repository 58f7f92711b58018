"""Train the embedded default's PROBE head on the broad Cu pool and the onset pool (run after
make_data.py, make_onset_data.py and train_mace.py).

Threshold: 2 x the main MACE's force RMS error on its own validation set (the documented
default of `probe-md train --in-domain`).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from probe_md import defaults
from probe_md.pipeline import TrainRequest, train_probe

WORK = Path(__file__).parent / "work"
OUTPUT = Path(sys.argv[1]) if len(sys.argv) > 1 else defaults.DEFAULT_DIR / defaults.HEAD_FILE  # or a trial path


def main() -> None:
    logging.basicConfig(format="%(message)s")
    logging.getLogger("probe_md").setLevel(logging.INFO)  # the threshold and the training summary
    _, info = train_probe(
        TrainRequest(
            model_path=defaults.DEFAULT_DIR / defaults.MODEL_FILE,
            data_paths=[WORK / "head_pool.extxyz", WORK / "onset_pool.extxyz"],
            in_domain_path=WORK / "mlip_valid.extxyz",
            output_path=OUTPUT,
            cache_dir=WORK / "feature_cache",
        )
    )
    print(info.training)


if __name__ == "__main__":
    main()
