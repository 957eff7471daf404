"""The "before" M for experiments/README.md: random windows and a global-norm clip (the old
scheme), trained on the same encoded CarRacing data as a finished run (paths below)."""
import dataclasses, json, os, sys
from pathlib import Path
from wm_jax import config as cfg, runtime, stages, run_folder
runtime.tune_malloc()
parent, sub = Path("/work/runs/car_dream_v1"), Path("/work/runs/car_dream_v1_randomM")
config = cfg.from_dict(json.loads((parent / "config.json").read_text()))
config = dataclasses.replace(config, mdn_train=dataclasses.replace(
    config.mdn_train, windows="random", grad_clip_mode="global_norm"))
(sub / "data").mkdir(parents=True, exist_ok=True)
for name in ("data/episodes", "data/encoded", "checkpoints/vae"):
    link = sub / name
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        os.symlink(parent / name, link)
(sub / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
print(stages.train_mdn_rnn(config, run_folder.RunPaths(sub), progress=False))
