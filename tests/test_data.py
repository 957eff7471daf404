"""Episode store (atomic files, manifest, corruption) and the V / M loaders."""

import json
import os
import threading
import tracemalloc
import warnings

import jax
import numpy as np
import pytest

from wm_jax.data import (
    CorruptEpisodeError,
    EncodedEpisode,
    Episode,
    EpisodeStore,
    NoEpisodesError,
    encode_store,
    frame_batches,
    sequence_batches,
    write_episode_file,
)
from wm_jax.data.encode import MIRROR_OFFSET
from wm_jax.data.loaders import FRAME_BYTES
from wm_jax.models import vae


def make_episode(index: int, length: int, done: bool = True) -> Episode:
    """Frame t of episode i is the constant image (i, t % 256, t // 256): identifiable."""
    frames = np.zeros((length, 64, 64, 3), np.uint8)
    frames[..., 0] = index
    frames[..., 1] = (np.arange(length) % 256)[:, None, None]
    frames[..., 2] = (np.arange(length) // 256)[:, None, None]
    actions = np.stack([np.full(length, index), np.arange(length)], -1).astype(np.float32)
    dones = np.zeros(length, bool)
    dones[-1] = done
    return Episode(frames, actions, np.ones(length, np.float32), dones)


def frame_ids(frames: np.ndarray) -> list[tuple[int, int]]:
    pixel = frames[:, 0, 0].astype(int)
    return list(zip(pixel[:, 0], pixel[:, 1] + 256 * pixel[:, 2], strict=True))


def make_store(root, lengths) -> EpisodeStore:
    store = EpisodeStore(root)
    for index, length in enumerate(lengths):
        store.write(index, make_episode(index, length), flush=False)
    store.flush()
    return store


def test_round_trip_manifest_and_determinism(tmp_path):
    store = make_store(tmp_path / "a", [3, 5])
    episode = store.read(1)
    for got, want in zip(episode, make_episode(1, 5), strict=True):
        np.testing.assert_array_equal(got, want)
        assert got.dtype == want.dtype
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert (manifest["num_episodes"], manifest["num_frames"]) == (2, 8)
    assert manifest["episodes"]["1"]["file"] == "episode_000001.npz"
    assert len(store) == 2 and store.has(0) and 1 in store and not store.has(2)
    assert sorted(os.listdir(tmp_path / "a")) == [
        "episode_000000.npz",
        "episode_000001.npz",
        "manifest.json",
    ]  # no temp files left
    other = make_store(tmp_path / "b", [3, 5])  # same data, same bytes
    assert other.path(1).read_bytes() == store.path(1).read_bytes()
    with np.load(store.path(0)) as npz:
        assert sorted(npz.files) == ["actions", "dones", "frames", "rewards"]


def test_write_rejects_bad_episodes(tmp_path):
    store = EpisodeStore(tmp_path)
    good = make_episode(0, 4)
    with pytest.raises(ValueError, match="frames is float32"):
        store.write(0, good._replace(frames=good.frames.astype(np.float32)))
    with pytest.raises(ValueError, match="rewards has shape"):
        store.write(0, good._replace(rewards=good.rewards[:3]))
    with pytest.raises(ValueError, match="64, 64, 3"):
        store.write(0, good._replace(frames=good.frames[:, :32]))
    assert len(store) == 0 and os.listdir(tmp_path) == []


def test_manifest_rebuilt_from_files(tmp_path):
    store = make_store(tmp_path, [3, 5])
    write_episode_file(tmp_path, 7, make_episode(7, 2))  # as a collection worker does
    store.mark_skipped(4, "too short", frames=12)
    (tmp_path / "manifest.json").unlink()
    rebuilt = EpisodeStore(tmp_path)
    assert rebuilt.indices() == [0, 1, 7] and rebuilt.total_frames == 10
    assert rebuilt.finished(4) and not rebuilt.has(4) and rebuilt.skipped()[4]["frames"] == 12
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.warns(UserWarning, match="rebuilding"):
        assert EpisodeStore(tmp_path).indices() == [0, 1, 7]
    store.path(0).unlink()
    assert EpisodeStore(tmp_path).indices() == [1, 7]


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_file_skipped_or_raised(tmp_path, damage):
    make_store(tmp_path, [4, 4, 4])
    path = tmp_path / "episode_000001.npz"
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(data[:200] + bytes([data[200] ^ 1]) + data[201:])
    store = EpisodeStore(tmp_path)
    with pytest.raises(CorruptEpisodeError, match="episode_000001.npz"):
        store.read(1)
    with pytest.warns(UserWarning, match="episode_000001.npz"):
        assert [index for index, _ in store.episodes()] == [0, 2]
    with pytest.warns(UserWarning, match="episode_000001.npz"):
        batches = list(frame_batches(0, EpisodeStore(tmp_path), 4, 100 * FRAME_BYTES))
    assert {i for batch in batches for i, _ in frame_ids(batch)} == {0, 2}
    strict = EpisodeStore(tmp_path, strict=True)
    with pytest.raises(CorruptEpisodeError, match="episode_000001.npz"):
        list(strict.episodes())
    # A damaged file the manifest does not know yet is caught when the store opens.
    (tmp_path / "manifest.json").unlink()
    if damage == "truncate":
        with pytest.warns(UserWarning, match="episode_000001.npz"):
            assert EpisodeStore(tmp_path).indices() == [0, 2]
        with pytest.raises(CorruptEpisodeError, match="episode_000001.npz"):
            EpisodeStore(tmp_path, strict=True)


def test_frame_batches_shuffle_cover_and_repeat(tmp_path):
    store = make_store(tmp_path, [30, 40, 50, 20, 10, 25])
    budget = 80 * FRAME_BYTES
    batches = list(frame_batches(3, store, 16, budget, num_epochs=2))
    assert all(b.shape == (16, 64, 64, 3) and b.dtype == np.uint8 for b in batches)
    assert len(batches) == (175 * 2) // 16
    seen = [fid for batch in batches for fid in frame_ids(batch)]
    all_ids = {(i, t) for i, n in enumerate([30, 40, 50, 20, 10, 25]) for t in range(n)}
    assert set(seen) == all_ids  # every frame, nothing else
    assert max(seen.count(fid) for fid in all_ids) == 2
    mixed = [len({i for i, _ in frame_ids(batch)}) > 1 for batch in batches]
    assert np.mean(mixed) > 0.8  # shuffled across the episodes in the pool
    again = list(frame_batches(3, store, 16, budget, num_epochs=2))
    np.testing.assert_array_equal(np.stack(again), np.stack(batches))  # seeded
    key = jax.random.key(3)
    other = next(frame_batches(key, store, 16, budget))
    assert not np.array_equal(other, batches[0])
    with pytest.raises(ValueError, match="too small"):
        next(frame_batches(0, store, 16, 60 * FRAME_BYTES))


def test_frame_batches_memory_is_bounded(tmp_path):
    store = make_store(tmp_path, [100] * 12)  # 1,200 frames, 14.7 MB decoded
    budget = 250 * FRAME_BYTES  # 3.1 MB
    longest_episode = 100 * FRAME_BYTES
    batches = frame_batches(0, store, 32, budget, num_epochs=1)
    tracemalloc.start()
    count = 0
    for batch in batches:
        count += len(batch)
        del batch
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == 1200 // 32 * 32
    # The pool, one decoded episode (plus its compressed bytes) and a batch, and no more.
    assert peak < budget + 2 * longest_episode + 32 * FRAME_BYTES + 2**20, peak / 2**20


def test_frame_batches_resume_exactly_at_any_batch(tmp_path, monkeypatch):
    store = make_store(tmp_path, [30, 40, 50, 20, 10, 25, 7])
    path = store.path(5)
    path.write_bytes(path.read_bytes()[:100])  # a corrupt episode shifts the stream: replay it too
    budget = 80 * FRAME_BYTES
    with pytest.warns(UserWarning, match="episode_000005.npz"):
        full = np.stack(list(frame_batches(3, EpisodeStore(tmp_path), 16, budget, num_epochs=3)))
    assert len(full) == (157 * 3) // 16
    reads = []
    original_read = EpisodeStore.read
    monkeypatch.setattr(EpisodeStore, "read", lambda s, i: reads.append(i) or original_read(s, i))
    for start in [1, 4, 5, 9, 17, len(full) - 1]:
        with pytest.warns(UserWarning, match="episode_000005.npz"):
            store = EpisodeStore(tmp_path)
            resumed = frame_batches(3, store, 16, budget, num_epochs=3, start_batch=start)
            reads.clear()
            resumed = [next(resumed), *resumed]
            if start == len(full) - 1:  # into the third epoch: replaying would decode 12+
                assert len(reads) <= 6  # fast-forwarding decodes only what the pool holds
        np.testing.assert_array_equal(np.stack(resumed), full[start:])
    with pytest.warns(UserWarning, match="episode_000005.npz"):
        store = EpisodeStore(tmp_path)
        assert list(frame_batches(3, store, 16, budget, num_epochs=3, start_batch=len(full))) == []
    # Endless, from a JAX key (as the V stage calls it).
    key = jax.random.key(11)
    with pytest.warns(UserWarning, match="episode_000005.npz"):
        endless = frame_batches(key, EpisodeStore(tmp_path), 16, budget, num_epochs=None)
        want = np.stack([next(endless) for _ in range(40)])
    with pytest.warns(UserWarning, match="episode_000005.npz"):
        store = EpisodeStore(tmp_path)
        resumed = frame_batches(key, store, 16, budget, num_epochs=None, start_batch=23)
        np.testing.assert_array_equal(np.stack([next(resumed) for _ in range(17)]), want[23:])
    with pytest.raises(ValueError, match="start_batch"):
        next(frame_batches(3, store, 16, budget, start_batch=-1))


def _truncate(store: EpisodeStore, index: int) -> None:
    path = store.path(index)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _next_within(stream, seconds: float = 60.0):
    """next(stream), failing (not hanging the suite) if a stream loops without yielding."""
    result = {}

    def target():
        try:
            result["batch"] = next(stream)
        except BaseException as error:  # handed to the test's thread
            result["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"the stream yielded nothing in {seconds} s: it loops for ever")
    if "error" in result:
        raise result["error"]
    return result["batch"]


def test_frame_batches_raise_instead_of_looping_over_corrupt_files(tmp_path):
    store = make_store(tmp_path / "episodes", [4, 4, 4, 4])
    for index in range(4):
        _truncate(store, index)
    message = (
        r"episodes: 0 of 4 episode files are readable \(4 corrupt\); recollect with --stages "
        "collect"
    )
    for resume in ({}, {"start_batch": 3}):
        with (
            pytest.warns(UserWarning, match="skipping corrupt"),
            pytest.raises(NoEpisodesError, match=message),
        ):
            store = EpisodeStore(tmp_path / "episodes")
            _next_within(frame_batches(0, store, 2, 100 * FRAME_BYTES, None, **resume))
    assert issubclass(NoEpisodesError, ValueError)


def test_frame_batches_raise_when_less_than_a_batch_is_readable(tmp_path):
    store = make_store(tmp_path, [4, 4, 4])
    _truncate(store, 1)
    _truncate(store, 2)
    with pytest.warns(UserWarning, match="skipping corrupt"):
        summary = EpisodeStore(tmp_path).readable_summary()
    assert summary == {
        "episodes": 1,
        "frames": 4,
        "corrupt": ["episode_000001.npz", "episode_000002.npz"],
    }
    assert make_store(tmp_path / "good", [4, 5]).readable_summary() == {
        "episodes": 2,
        "frames": 9,
        "corrupt": [],
    }
    with (
        pytest.warns(UserWarning, match="skipping corrupt"),
        pytest.raises(NoEpisodesError, match=r"1 of 3 .* \(2 corrupt\), 4 frames: fewer than one"),
    ):
        _next_within(frame_batches(0, EpisodeStore(tmp_path), 16, 100 * FRAME_BYTES, None))
    with pytest.raises(CorruptEpisodeError, match="episode_000001.npz"):
        EpisodeStore(tmp_path, strict=True).readable_summary()


def test_frame_batches_progress_when_the_store_is_smaller_than_the_budget(tmp_path):
    # The pool was sized to the store (21 frames): 5 frames left over from a fill plus the
    # 20-frame episode never fit again, and the stream spun without yielding.
    store = make_store(tmp_path, [20, 1])
    stream = frame_batches(0, store, 16, 100 * FRAME_BYTES, num_epochs=3)
    batches = [_next_within(stream) for _ in range(3)]
    assert list(stream) == []  # (21 x 3) // 16 batches
    seen = [fid for batch in batches for fid in frame_ids(batch)]
    assert set(seen) <= {(0, t) for t in range(20)} | {(1, 0)}
    assert max(seen.count(fid) for fid in seen) <= 3  # no frame more often than once an epoch


def make_encoded(index: int, length: int, latent_dim: int = 3) -> EncodedEpisode:
    """mu[t] = 1000 i + t in every dim: windows can be traced back to their episode and step."""
    steps = 1000.0 * index + np.arange(length, dtype=np.float32)
    mu = np.repeat(steps[:, None], latent_dim, 1)
    actions = np.stack([steps, -steps], -1)
    dones = np.zeros(length, bool)
    dones[-1] = True
    return EncodedEpisode(mu, mu - 0.5, actions, steps.copy(), dones)


def test_sequence_batches_windows_padding_and_masks(tmp_path):
    lengths = [5, 12, 30]
    store = EpisodeStore(tmp_path)
    for index, length in enumerate(lengths):
        store.write(index, make_encoded(index + 1, length))
    seq_len = 10
    batches = list(sequence_batches(0, store, 64, seq_len, num_batches=5))
    batch = batches[0]
    assert batch.mu.shape == batch.logvar.shape == (64, seq_len + 1, 3)
    assert batch.actions.shape == (64, seq_len, 2)
    assert batch.restarts.shape == batch.dones.shape == batch.mask.shape == (64, seq_len)
    assert batch.mask.dtype == bool and batch.rewards.dtype == np.float32
    starts_seen = set()
    for batch in batches:
        for row in range(64):
            episode, start = divmod(int(batch.mu[row, 0, 0]), 1000)
            length = lengths[episode - 1]
            starts_seen.add((episode, start))
            steps, latents = min(seq_len, length - start), min(seq_len + 1, length - start)
            first = 1000.0 * episode + start
            np.testing.assert_array_equal(batch.actions[row, :steps, 0], first + np.arange(steps))
            np.testing.assert_array_equal(batch.rewards[row, :steps], first + np.arange(steps))
            np.testing.assert_array_equal(batch.mu[row, :latents, 0], first + np.arange(latents))
            np.testing.assert_array_equal(batch.mask[row], np.arange(seq_len) < latents - 1)
            assert batch.restarts[row, 0] == (start == 0) and not batch.restarts[row, 1:].any()
            assert batch.dones[row].any() == (start + seq_len >= length)  # the last action's
            assert (batch.actions[row, steps:] == 0).all() and (batch.mu[row, latents:] == 0).all()
    assert (1, 0) in starts_seen and (3, 20) in starts_seen  # short episode; window at the end
    assert (3, 29) in starts_seen  # a window may start at the last step: padded past the end


def test_sequence_batches_show_the_done_often(tmp_path):
    # M's done head only learns from windows holding an episode's last action: with windows
    # starting anywhere, about seq_len / length of an episode's windows do (here 10 / 100).
    store = EpisodeStore(tmp_path)
    for index in range(4):
        store.write(index, make_encoded(index + 1, 100))
    batch = next(sequence_batches(0, store, 2000, 10, num_batches=1))
    fraction = batch.dones.any(axis=1).mean()
    assert 0.07 < fraction < 0.13, fraction


def random_vae_params(seed: int, latent_dim: int = 4):
    """V's parameter tree filled with noise: init_params compiles for tens of seconds on CPU."""
    config = vae.VAEConfig(latent_dim=latent_dim)
    shapes = jax.eval_shape(lambda key: vae.init_params(key, config), jax.random.key(0))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (0.05 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)


def test_encode_store_matches_vae_and_resumes(tmp_path):
    # Batches of 8 over episodes of 5, 11 and 3 frames: every batch but the last spans two
    # episodes, so codes handed back to the wrong episode or frame cannot pass.
    store = make_store(tmp_path / "frames", [5, 11, 3])
    rng = np.random.default_rng(1)
    for index in store.indices():
        episode = store.read(index)
        store.write(
            index, episode._replace(frames=rng.integers(0, 256, episode.frames.shape, np.uint8))
        )
    params = random_vae_params(0)
    out = EpisodeStore(tmp_path / "encoded")
    summary = encode_store(params, store, out, batch_size=8, progress=False)
    assert (summary["encoded"], summary["frames"]) == (3, 19)
    assert out.read(1).mu.shape == out.read(1).logvar.shape == (11, 4)
    assert out.read(1).mu.dtype == np.float32
    for index, length in zip(store.indices(), [5, 11, 3], strict=True):
        encoded = out.read(index)
        mu, logvar = jax.jit(vae.encode)(params, vae.frames_to_float(store.read(index).frames))
        assert encoded.mu.shape == (length, 4)
        np.testing.assert_allclose(encoded.mu, mu, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(encoded.logvar, logvar, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(encoded.actions, store.read(index).actions)
    again = encode_store(params, store, EpisodeStore(tmp_path / "encoded"), progress=False)
    assert (again["encoded"], again["already_done"]) == (0, 3)
    other = random_vae_params(1)
    with pytest.raises(ValueError, match="other VAE parameters"):
        encode_store(other, store, out, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert next(sequence_batches(0, out, 2, 4)).mu.shape == (2, 5, 4)


def test_encode_store_mirrors_frames_and_actions_and_resumes(tmp_path):
    store = make_store(tmp_path / "frames", [5, 11])
    # Frames that differ left from right, so a missed flip cannot pass.
    rng = np.random.default_rng(0)
    for index in store.indices():
        episode = store.read(index)
        store.write(
            index, episode._replace(frames=rng.integers(0, 256, episode.frames.shape, np.uint8))
        )
    params = random_vae_params(0)
    out = EpisodeStore(tmp_path / "encoded")
    encode_store(params, store, out, batch_size=8, progress=False)  # no mirrors yet
    summary = encode_store(params, store, out, batch_size=8, progress=False, mirror_signs=(-1, 1))
    assert summary["encoded"] == 2  # only the missing mirrors were encoded
    assert out.indices() == [0, 1, MIRROR_OFFSET, MIRROR_OFFSET + 1]
    original, mirrored = store.read(1), out.read(MIRROR_OFFSET + 1)
    flipped = vae.frames_to_float(original.frames[:, :, ::-1])
    mu, _ = jax.jit(vae.encode)(params, flipped)
    np.testing.assert_allclose(mirrored.mu, mu, rtol=1e-4, atol=1e-5)
    assert not np.allclose(mirrored.mu, out.read(1).mu, atol=1e-3)
    np.testing.assert_array_equal(mirrored.actions, original.actions * np.float32([-1, 1]))
    np.testing.assert_array_equal(mirrored.dones, original.dones)
    again = encode_store(params, store, out, progress=False, mirror_signs=(-1, 1))
    assert again["encoded"] == 0


def test_load_encoded_with_a_limit_reads_only_the_first_episodes(tmp_path):
    from wm_jax.data import load_encoded

    store = EpisodeStore(tmp_path)
    for index in range(4):
        store.write(index, make_encoded(index + 1, 5))
    store.path(3).write_bytes(b"corrupt")  # never read with limit=2
    first = load_encoded(EpisodeStore(tmp_path, strict=True), limit=2)
    assert [int(episode.mu[0, 0]) for episode in first] == [1000, 2000]
    with pytest.raises(Exception, match="episode_00000003|corrupt|sha256"):
        load_encoded(EpisodeStore(tmp_path, strict=True))
