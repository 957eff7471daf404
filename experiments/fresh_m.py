"""One lever on M, measured: a fresh M (and C) on an existing run's data, with changed settings.

    python experiments/fresh_m.py SRC_RUN NEW_RUN [section.field=value ...]

NEW_RUN gets SRC_RUN's episodes and encodings (hard links) and V (a symlink), none of its M, C or
results, and SRC_RUN's config with the settings given; then M, C, evaluation and the report run
as in `python -m wm_jax.experiment`. Used in experiments/README.md ("M's reward floored at -1")
on the heuristic-driver round's folder:

    python experiments/fresh_m.py RUN/iterations/iter_1/iterations/iter_1 runs/car-floor \\
        mdn_rnn.reward_min=-1 mdn_rnn.reward_over_weight=1 mdn_train.num_steps=3000

Rerunning the command on an existing NEW_RUN resumes it (its config is kept).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from wm_jax.core import links
from wm_jax.pipeline import config as cfg
from wm_jax.pipeline import experiment, run_folder

KEPT_STAGES = ("collect", "train_vae", "encode")  # taken as complete; the rest rerun


def seed_run(src: Path, dst: Path, overrides: list[str]) -> None:
    """Create `dst` from `src`'s data, V and stage records up to encode, with `overrides`.

    Links and records as a §5 iteration takes them from its parent (`iterative.prepare_iteration`).
    """
    config = cfg.apply_overrides(
        cfg.from_dict(json.loads((src / "config.json").read_text())), overrides
    )
    staging = dst.with_name(dst.name + ".partial")  # a crash never leaves a half-seeded run
    shutil.rmtree(staging, ignore_errors=True)
    experiment.prepare_run_dir(staging, config)
    source, paths = run_folder.RunPaths(src), run_folder.RunPaths(staging)
    links.link_store(source.episodes, paths.episodes)
    links.link_store(source.encoded, paths.encoded)
    for name in ("checkpoints/vae", "metrics/train_vae.jsonl"):  # V, and the report's V curve
        if (src / name).exists():
            links.symlink(src / name, staging / name)
    for stage in KEPT_STAGES:
        run_folder.adopt_record(src, staging, stage)
    staging.rename(dst)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    src, dst, overrides = Path(argv[0]), Path(argv[1]), argv[2:]
    if not dst.exists():
        seed_run(src, dst, overrides)
    elif overrides:
        print(f"{dst} exists: resuming it with its own config (settings given are ignored)")
    config = cfg.from_dict(json.loads((dst / "config.json").read_text()))
    experiment.run_config(config, dst, progress=False)
    return 0


if __name__ == "__main__":  # worker processes re-import this file: run only in the parent
    sys.exit(main(sys.argv[1:]))
