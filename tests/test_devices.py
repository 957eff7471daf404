"""Data parallelism over local devices (`wm_jax.core.devices`): V's and M's training and the
encoding on 4 forced host devices give the one-device numbers, and the programs really split
the batch. Each check runs in a fresh process, because the device count is fixed at JAX's
start."""

import os
import subprocess
import sys
import textwrap

import pytest

from wm_jax.core import devices

PRELUDE = """
import jax, jax.numpy as jnp, numpy as np
from wm_jax.core import devices
from wm_jax.train import training_loop
assert jax.local_device_count() == 4, jax.devices()
mesh = devices.data_mesh(0, 8)
assert mesh is not None and mesh.size == 4

def run_both(init_state, train_step, batches, steps):
    out = {}
    for name, m in (("one", None), ("four", mesh)):
        state, last = training_loop.run(name, jax.random.key(3), train_step, init_state,
                                        lambda start: batches, steps, progress=False,
                                        log_every=1, mesh=m)
        out[name] = (state, last)
    return out

def check_close(out, rtol, param_atol):
    # The losses agree to float32 summation order. Weights agree to within the steps' size:
    # Adam moves a weight by about the learning rate whatever its gradient's size, so a
    # near-zero gradient whose last bits differ can move it the other way.
    (one, last_one), (four, last_four) = out["one"], out["four"]
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(four.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=param_atol)
    for k in last_one:
        np.testing.assert_allclose(last_one[k], last_four[k], rtol=rtol, atol=rtol)
    assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(four.params))
"""


def _run(body: str) -> str:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    env["JAX_PLATFORMS"] = "cpu"
    script = PRELUDE + textwrap.dedent(body)
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_v_m_and_encoding_on_four_devices_give_the_one_device_numbers(tmp_path):
    # One process for the three (JAX's start and the compilations dominate).
    v_check = """
from wm_jax.models import vae
from wm_jax.train import vae_train
init_state, train_step = vae_train.make_train(
    vae.VAEConfig(latent_dim=4), vae_train.VAETrainConfig(batch_size=8))
rng = np.random.default_rng(0)
batches = [rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8) for _ in range(3)]
result = run_both(init_state, train_step, batches, 3)
check_close(result, 1e-4, param_atol=2 * 3 * 1e-4)  # 3 steps at Adam 1e-4
state = devices.place_state(init_state(jax.random.key(0)), mesh)
text = train_step.lower(jax.random.key(1), state,
                        devices.shard_batch(batches[0], mesh)).as_text()
assert '{"data"}' in text, "V's batch is not split"
"""
    m_check = """
from wm_jax.models import mdn_rnn
from wm_jax.train import mdn_rnn_train
config = mdn_rnn.MDNRNNConfig(latent_dim=3, action_dim=2, hidden_size=8,
                              num_mixtures=2, predict_done=True, predict_reward=True)
train_config = mdn_rnn_train.MDNTrainConfig(batch_size=8, seq_len=5, num_steps=3)
init_state, train_step = mdn_rnn_train.make_train(config, train_config)
rng = np.random.default_rng(0)
def batch():
    return mdn_rnn_train.SequenceBatch(
        rng.normal(size=(8, 6, 3)).astype(np.float32),
        rng.normal(size=(8, 6, 3)).astype(np.float32) - 2,
        rng.uniform(-1, 1, (8, 5, 2)).astype(np.float32),
        rng.random((8, 5)) < 0.1, rng.random((8, 5)) < 0.1,
        rng.normal(size=(8, 5)).astype(np.float32), np.ones((8, 5), bool))
batches = [batch() for _ in range(3)]
result = run_both(init_state, train_step, batches, 3)
check_close(result, 1e-4, param_atol=2 * 3 * 1e-3)  # 3 steps at Adam 1e-3
carry = result["four"][0].carry
for a, b in zip(jax.tree.leaves(result["one"][0].carry), jax.tree.leaves(carry)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
assert not jax.tree.leaves(carry)[0].sharding.is_fully_replicated  # split by row
"""
    encode_check = f"""
from pathlib import Path
from wm_jax.data import EpisodeStore, encode_store
from wm_jax.data.store import Episode
from wm_jax.models import vae
root = Path({str(tmp_path)!r})
params = vae.init_params(jax.random.key(0), vae.VAEConfig(latent_dim=4))
store = EpisodeStore(root / "episodes")
rng = np.random.default_rng(1)
for index, length in enumerate((13, 5)):
    store.write(index, Episode(
        rng.integers(0, 256, (length, 64, 64, 3), dtype=np.uint8),
        rng.uniform(-1, 1, (length, 1)).astype(np.float32),
        np.zeros(length, np.float32), np.zeros(length, bool)))
codes = {{}}
for name, m in (("one", None), ("four", mesh)):
    out = EpisodeStore(root / name)
    encode_store(params, store, out, batch_size=8, progress=False, mesh=m)
    codes[name] = [out.read(i) for i in (0, 1)]
for a, b in zip(codes["one"], codes["four"]):
    np.testing.assert_allclose(a.mu, b.mu, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a.logvar, b.logvar, rtol=1e-5, atol=1e-5)
"""
    out = _run(v_check + m_check + encode_check + "print('ok')")
    assert out.strip().endswith("ok")


def test_one_device_changes_nothing_and_bad_counts_name_the_setting():
    import jax
    import numpy as np

    assert devices.data_mesh(0, 100) is None  # this process: one CPU device
    batch = np.zeros((3, 2))
    assert devices.shard_batch(batch, None) is batch
    with pytest.raises(ValueError, match=r"data.devices=2: 1 device\(s\) available"):
        devices.data_mesh(2)
    mesh = jax.sharding.Mesh(np.array(jax.local_devices() * 1), ("data",))
    devices.check_divisible(7, mesh, "vae_train.batch_size")  # one device: anything splits
    # The runner prints it as one line, not a traceback.
    from wm_jax.pipeline.cli import user_error

    try:
        devices.data_mesh(2)
    except devices.DeviceSplitError as err:
        assert user_error(err) == str(err) and "\n" not in str(err)


def test_the_largest_even_split_is_chosen(monkeypatch):
    import jax

    fake = [jax.local_devices()[0]] * 8  # a TPU v2-8's count of devices, for the choice only
    monkeypatch.setattr(jax, "devices", lambda: fake)
    assert devices.data_mesh(0, 100).size == 5  # V's paper batch on 8 devices: 5 x 20
    assert devices.data_mesh(0, 128).size == 8
    assert devices.data_mesh(0, 11) is None  # a prime above the count: one device
    with pytest.raises(ValueError, match="vae_train.batch_size=100 does not split over 8"):
        devices.check_divisible(100, devices.data_mesh(8), "vae_train.batch_size")
