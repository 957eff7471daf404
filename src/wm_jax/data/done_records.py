"""Whether an episode store records where its episodes end (the `done` an M with a done head
learns from), and the one-line error for stores that do not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from wm_jax.data.store import META, EpisodeStore, NoEpisodesError

# Format marker in meta.json (written by `wm_jax.envs.collect`): True when `dones` hold the
# game's real episode ends. Stores collected before it: CarRacing ran every episode to its frame
# cap ignoring the game's done (World Models code's `full_episode`), the other games recorded it.
RECORDS_DONE = "records_done"
_UNMARKED_RECORDS_DONE = {"doom_take_cover": True, "minatar_breakout": True}


def records_done(meta: dict[str, Any]) -> bool:
    """Whether a store's meta.json says its dones are the game's episode ends (see above)."""
    if RECORDS_DONE in meta:
        return bool(meta[RECORDS_DONE])
    return _UNMARKED_RECORDS_DONE.get(meta.get("game"), False)


def require_done_records(store: EpisodeStore, game: str) -> None:
    """Raises ValueError unless `store` (or, if encoded, the store it was encoded from) records
    where episodes end, as an M that predicts done needs; reads meta.json files only."""
    folder, meta = store.root, store.read_meta()
    if RECORDS_DONE not in meta and "source" in meta:  # an encoded store: ask its source
        folder = Path(meta["source"])
        try:
            meta = json.loads((folder / META).read_text())
        except FileNotFoundError:
            meta = {}
    if not records_done({"game": game} | meta):
        what = "collected without" if meta else "not marked (no meta.json) as recording"
        raise NoEpisodesError(
            f"{folder} holds {game} episodes {what} the game's done (dones all False), so M "
            "cannot learn where episodes end: move it away and recollect with --stages collect"
        )
