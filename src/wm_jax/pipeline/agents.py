"""Shipped agents: a finished run's V, M and C in a small folder that loads without pickle.

Layout of an agent folder (`agents/<game>/` in the repository)::

    config.json    # the run's full experiment config (`wm_jax.pipeline.config.from_dict`)
    weights.npz    # V, M and C as arrays named by key path: "vae/encoder/conv0/kernel", ...
    agent.json     # what it is: experiment, scores (the exporter's notes), source run, dtype
    manifest.json  # sha256 and size of every file above; written last

V and M are stored as float16 by default (half the bytes, well inside float16's range and
precision for these weights) and cast back to float32 on load; C's flat parameters stay float32:
they are a thousand-odd numbers, exactly what CMA-ES chose. `load_agent` checks every file
against the manifest before reading any, rebuilds the pytrees from the models' own init
functions (`jax.eval_shape`) and reads weights.npz with `allow_pickle=False`: nothing in an
agent folder can run code. `python -m wm_jax.agents RUN_DIR OUT_DIR` exports one.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from wm_jax import __version__
from wm_jax.core.checkpoint import CheckpointError, atomic_write_json
from wm_jax.core.files import atomic_write
from wm_jax.models import controller, mdn_rnn, vae
from wm_jax.pipeline import config as cfg

FORMAT = "wm_jax-agent/1"
MANIFEST = "manifest.json"
FILES = ("config.json", "weights.npz", "agent.json")
DTYPES = ("float16", "float32")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed: the same weights export to the same bytes


class AgentError(CheckpointError):
    """An agent folder is missing, incomplete or changed since export (a `CheckpointError`:
    command line tools print it as one `error:` line naming the file)."""


class Agent(NamedTuple):
    """A trained V, M and C with the config they were trained under."""

    config: cfg.ExperimentConfig
    vae_params: Any  # V's params pytree (float32 numpy arrays)
    m_params: Any  # M's params pytree
    c_flat: np.ndarray  # (D,) float32, C's flat parameters
    c_config: controller.ControllerConfig
    info: dict[str, Any]  # agent.json (or, for a run folder, where it came from)

    def models(self):
        """V (and M, when C reads its state) for `wm_jax.pipeline.evaluate.evaluate_controller`."""
        from wm_jax.envs.real_rollout import RealModels

        if not self.c_config.uses_memory:
            return RealModels(self.vae_params)
        return RealModels(self.vae_params, self.config.mdn_rnn, self.m_params)

    def policy(self, **kwargs: Any):
        """A `ControllerPolicy` (per-frame V → C → M); kwargs go to it (noise, sample_z)."""
        from wm_jax.envs.controller_policy import ControllerPolicy

        models = (self.vae_params, self.config.mdn_rnn, self.m_params)
        return ControllerPolicy(self.c_config, self.c_flat, *models, **kwargs)


def _name(path: tuple) -> str:
    """A pytree key path as an array name: "vae/encoder/mu/kernel"."""
    parts = (getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path)
    return "/".join(str(part) for part in parts)


def _shapes(config: cfg.ExperimentConfig, c_config: controller.ControllerConfig) -> Any:
    """The pytree weights.npz holds, as shapes only (the models' init functions, not run)."""
    key = jax.random.key(0)
    flat = jax.ShapeDtypeStruct((controller.num_params(c_config),), jnp.float32)
    return {
        "vae": jax.eval_shape(lambda k: vae.init_params(k, config.vae), key),
        "mdn_rnn": jax.eval_shape(lambda k: mdn_rnn.init_params(k, config.mdn_rnn), key),
        "controller": {"flat_params": flat},
    }


def from_run(run_dir: str | Path) -> Agent:
    """The trained agent of a finished run folder (its V, M and final C checkpoints)."""
    from wm_jax.pipeline import run_models
    from wm_jax.pipeline.run_folder import RunPaths

    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise AgentError(f"{run_dir} is not a run folder (no config.json)")
    config = cfg.from_dict(json.loads((run_dir / "config.json").read_text()))
    paths = RunPaths(run_dir)
    v, m = (
        jax.device_get(load(config, paths))
        for load in (run_models.load_vae, run_models.load_mdn_rnn)
    )
    c_flat = np.asarray(run_models.load_controller(paths), np.float32)
    info = {"source_run": str(run_dir), "experiment": config.experiment}
    numpy = functools.partial(jax.tree.map, np.asarray)
    return Agent(config, numpy(v), numpy(m), c_flat, run_models.controller_config(config), info)


def _run_summary(run_dir: Path) -> dict[str, Any]:
    """The ids of the stages exported and the run's own evaluation (on selection seeds)."""
    from wm_jax.pipeline import run_folder

    exported = ("train_vae", "train_mdn_rnn", "train_controller")
    summary: dict[str, Any] = {"stage_ids": run_folder.current_inputs(run_dir, exported)}
    evaluation = (run_folder.read_record(run_dir, "evaluate") or {}).get("summary") or {}
    if "mean" in evaluation:
        keys = ("episodes", "mean", "std")
        summary["run_evaluation"] = {"seed_set": "selection"} | {k: evaluation[k] for k in keys}
    return summary


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz archive (what `np.savez_compressed` writes) with fixed timestamps."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            entry = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
            entry.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(entry, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _file_entry(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def export_agent(
    run_dir: str | Path, out_dir: str | Path, dtype: str = "float16", notes: dict | None = None
) -> Path:
    """Write the trained agent of a finished run folder into `out_dir`; returns `out_dir`.

    Args:
      dtype: V's and M's storage ("float16" or "float32"); C is always float32.
      notes: what to say about the agent in agent.json, e.g. its published score and seeds.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: choose one of {DTYPES}")
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if out_dir.resolve() == run_dir.resolve() or (out_dir / "checkpoints").exists():
        raise AgentError(f"{out_dir} is a run folder: export into a folder of its own")
    agent = from_run(run_dir)
    tree = {"vae": agent.vae_params, "mdn_rnn": agent.m_params}
    tree["controller"] = {"flat_params": agent.c_flat}
    arrays = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name, leaf = _name(path), np.asarray(leaf, np.float32)
        arrays[name] = leaf if name.startswith("controller/") else leaf.astype(dtype)
        if not np.all(np.isfinite(arrays[name])):
            raise ValueError(f"{name}: values beyond {dtype}'s range; export with float32")
    expected = jax.tree_util.tree_flatten_with_path(_shapes(agent.config, agent.c_config))[0]
    if sorted(arrays) != sorted(_name(path) for path, _ in expected):  # loads back, or fails now
        raise AgentError(f"{run_dir}: its checkpoints do not match the models of its config")

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)  # an interrupted re-export reads as incomplete
    counts = {part: sum(np.size(x) for x in jax.tree.leaves(tree[part])) for part in tree}
    config = agent.config
    info = {
        "format": FORMAT,
        **{key: getattr(config, key) for key in ("experiment", "game", "scale", "seed")},
        "source_run": str(run_dir.resolve()),
        "dtype": dtype,
        "parameters": {part: int(n) for part, n in counts.items()},
        "controller": controller.config_to_dict(agent.c_config),
        "wm_jax_version": __version__,
        "exported": datetime.now(UTC).isoformat(timespec="seconds"),
        "notes": dict(notes or {}),
        **_run_summary(run_dir),
    }
    atomic_write_json(out_dir / "config.json", config.to_dict())
    atomic_write(out_dir / "weights.npz", _npz_bytes(arrays))
    atomic_write_json(out_dir / "agent.json", info)
    files = {name: _file_entry(out_dir / name) for name in FILES}
    atomic_write_json(out_dir / MANIFEST, {"format": FORMAT, "files": files})
    return out_dir


def verify(path: str | Path) -> dict[str, Any]:
    """Check every file of an agent folder against its manifest; returns the manifest."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files = manifest["files"]
    except FileNotFoundError:
        raise AgentError(
            f"{path / MANIFEST} is missing: {path} is not an exported agent (or its export was "
            "interrupted); export one with python -m wm_jax.agents RUN_DIR OUT_DIR"
        ) from None
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise AgentError(f"{path / MANIFEST} is unreadable ({err}); export again") from None
    for name, entry in ({name: {} for name in FILES} | files).items():
        file = path / name
        if Path(name).name != name or not file.is_file():
            raise AgentError(f"{file} is missing (listed in {MANIFEST}); restore or re-export it")
        if _file_entry(file) != {"sha256": entry.get("sha256"), "bytes": entry.get("bytes")}:
            raise AgentError(
                f"{file} does not match its sha256 in {MANIFEST}: it was changed after export; "
                "restore it (git checkout) or export the agent again"
            )
    return manifest


def load_agent(path: str | Path) -> Agent:
    """An exported agent folder, verified against its manifest, as float32 pytrees."""
    path = Path(path)
    verify(path)
    config = cfg.from_dict(json.loads((path / "config.json").read_text()))
    info = json.loads((path / "agent.json").read_text())
    c_config = controller.config_from_dict(info["controller"])
    leaves, treedef = jax.tree_util.tree_flatten_with_path(_shapes(config, c_config))
    weights = path / "weights.npz"
    try:
        with np.load(weights, allow_pickle=False) as npz:
            stored = {name: npz[name] for name in npz.files}
    except ValueError as err:  # object arrays, or not an npz archive at all
        raise AgentError(f"{weights}: not a plain-array .npz archive ({err})") from None
    arrays = []
    for key_path, shape in leaves:
        name = _name(key_path)
        if name not in stored or stored[name].shape != shape.shape:
            found = stored[name].shape if name in stored else "nothing"
            raise AgentError(f"{weights}: {name} should be {shape.shape}, found {found}")
        arrays.append(np.asarray(stored.pop(name), np.float32))
    if stored:
        raise AgentError(f"{weights} holds arrays its config has no place for: {sorted(stored)}")
    tree = jax.tree_util.tree_unflatten(treedef, arrays)
    c_flat = tree["controller"]["flat_params"]
    return Agent(config, tree["vae"], tree["mdn_rnn"], c_flat, c_config, info)


def load(path: str | Path) -> Agent:
    """An exported agent folder (has manifest.json) or a finished run folder (checkpoints/)."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return load_agent(path)
    if (path / "config.json").is_file() and (path / "checkpoints").is_dir():
        return from_run(path)
    raise AgentError(f"{path}: no agent here (no {MANIFEST}; not a run folder with checkpoints/)")


def _parse_notes(items: list[str]) -> dict[str, Any]:
    notes: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise cfg.ConfigError(f"--notes {item!r}: expected KEY=VALUE")
        try:
            notes[key] = json.loads(value)  # numbers, lists, true/false
        except json.JSONDecodeError:
            notes[key] = value
    return notes


def main(argv: list[str] | None = None) -> int:
    """`python -m wm_jax.agents RUN_DIR OUT_DIR`: export a finished run's agent."""
    import argparse

    from wm_jax.pipeline.cli import exit_code

    parser = argparse.ArgumentParser(
        prog="python -m wm_jax.agents",
        description="Export the trained V, M and C of a finished run folder into a small, "
        "committable agent folder (config.json, weights.npz, agent.json, manifest.json).",
    )
    parser.add_argument("run_dir", type=Path, help="a run folder whose train_controller finished")
    parser.add_argument("out_dir", type=Path, help="the agent folder, e.g. agents/doom_take_cover")
    parser.add_argument("--dtype", choices=DTYPES, default="float16", help="V's and M's storage")
    parser.add_argument("--notes", nargs="*", default=[], metavar="KEY=VALUE", help="e.g. mean=9")
    args = parser.parse_args(argv)

    def work() -> None:
        notes = _parse_notes(args.notes)
        out = export_agent(args.run_dir, args.out_dir, args.dtype, notes)
        total = sum(entry["bytes"] for entry in verify(out)["files"].values())
        print(f"exported {args.run_dir} to {out} ({total:,} bytes, {args.dtype})")

    return exit_code(work)


if __name__ == "__main__":
    import sys

    sys.exit(main())
