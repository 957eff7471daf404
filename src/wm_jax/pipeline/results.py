"""`DIR/results.json`: what a run folder's stage records add up to (scores, losses, wall time
and peak memory per stage), with the machine and package versions that produced them."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from wm_jax.core import runtime
from wm_jax.core.checkpoint import atomic_write_json
from wm_jax.pipeline import config as cfg
from wm_jax.pipeline import run_folder

PACKAGES = (
    "wm_jax",
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "evosax",
    "gymnax",
    "orbax-checkpoint",
    "gymnasium",
    "vizdoom",
    "numpy",
)

# What each stage reads (besides the config): its record is stale when one of these changed.
UPSTREAM = {stage: cfg.STAGES[:i] for i, stage in enumerate(cfg.STAGES)}


def environment_info() -> dict[str, Any]:
    import jax

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    device = jax.devices()[0]
    return {
        "versions": versions,
        "device": {
            "platform": device.platform,
            "kind": device.device_kind,
            "count": jax.device_count(),
            "processes": jax.process_count(),
        },
        "python": sys.version.split()[0],
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "malloc": runtime.malloc_mode(),
    }


def write_results(config: cfg.ExperimentConfig, run_dir: Path) -> dict[str, Any]:
    """Gather the stage records into `DIR/results.json`."""
    records = {}
    for stage in cfg.STAGES:
        if run_folder.is_current(run_dir, stage, UPSTREAM[stage]):
            records[stage] = run_folder.read_record(run_dir, stage)
    summary = {stage: record["summary"] for stage, record in records.items()}
    results = {
        "experiment": config.experiment,
        "scale": config.scale,
        "seed": config.seed,
        **environment_info(),
        "wall_time_s": {stage: record["seconds"] for stage, record in records.items()},
        # Peak resident memory per stage (this process during the stage; the largest worker
        # process so far), as `runtime.peak_memory_mb` measures it; None in older records.
        "peak_memory_mb": {
            stage: record.get("peak_memory_mb") for stage, record in records.items()
        },
        "peak_memory_mb_overall": max(
            (
                value
                for record in records.values()
                for value in (record.get("peak_memory_mb") or {}).values()
                if value is not None
            ),
            default=None,
        ),
        "vae_final_loss": summary.get("train_vae", {}).get("final_loss"),
        "mdn_rnn_final_loss": summary.get("train_mdn_rnn", {}).get("final_loss"),
        "controller": summary.get("train_controller"),
        "evaluation": summary.get("evaluate"),
        "stages": summary,
    }
    atomic_write_json(run_dir / "results.json", results)
    return results
