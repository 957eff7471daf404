"""The "before" M of experiments/README.md: random windows and a global-norm clip (the scheme
this project used before the authors' streams), on the same encoded data as a finished run.

    python experiments/train_random_windows_m.py PARENT_RUN OUT_DIR

OUT_DIR gets links to the parent's episodes, encodings and V, and its own M checkpoint, so
`experiments/m_diagnostics.py PARENT_RUN OUT_DIR` compares the two Ms.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

from wm_jax.core import runtime
from wm_jax.pipeline import config as cfg
from wm_jax.pipeline import run_folder, stages


def main(parent: Path, out: Path) -> None:
    runtime.tune_malloc()
    config = cfg.from_dict(json.loads((parent / "config.json").read_text()))
    train = dataclasses.replace(config.mdn_train, windows="random", grad_clip_mode="global_norm")
    config = dataclasses.replace(config, mdn_train=train)
    for name in ("data/episodes", "data/encoded", "checkpoints/vae"):
        link = out / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            os.symlink((parent / name).absolute(), link)
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    print(stages.train_mdn_rnn(config, run_folder.RunPaths(out), progress=False))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
