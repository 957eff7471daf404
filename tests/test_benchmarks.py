"""The benchmark harness in its smallest form: references agree with wm_jax, records and files.

Correctness of the harness only, never timings: the eager-torch and NumPy references compute the
same networks as wm_jax given the same weights, the FLOP formula is the stated one, and a `tiny`
run writes a JSON record with the expected keys, a markdown summary and a plot.
"""

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

# benchmarks/ is a top-level folder beside src/, not part of the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import (  # noqa: E402
    dream_speed,
    goals,
    harness,
    numpy_reference,
    peak,
    report,
    run,
    training_speed,
)
from wm_jax.core import kernels  # noqa: E402
from wm_jax.models import (
    controller,
    mdn_rnn,
    vae,  # noqa: E402
)

MDN_CONFIGS = {
    "car_racing": mdn_rnn.CAR_RACING,
    "doom": mdn_rnn.DOOM,
    "car_racing_reward": dream_speed.DREAM_GAMES["car_racing"].mdn,
}
CONTROLLERS = {"car_racing": controller.CAR_RACING, "doom": controller.DOOM}
TOL = 1e-4
# Jitted: eager op-by-op dispatch would compile every primitive separately.
forward_step = jax.jit(mdn_rnn.forward_step, static_argnums=0)
forward_sequence = jax.jit(mdn_rnn.forward_sequence, static_argnums=0)
encode = jax.jit(vae.encode)
decode = jax.jit(vae.decode)


def _inputs(config, batch, seed=2):
    rng = np.random.default_rng(seed)
    state = mdn_rnn.LSTMState(
        c=rng.normal(size=(batch, config.hidden_size)).astype(np.float32),
        h=rng.uniform(-1, 1, (batch, config.hidden_size)).astype(np.float32),
    )
    z = rng.normal(size=(batch, config.latent_dim)).astype(np.float32)
    action = rng.uniform(-1, 1, (batch, config.action_dim)).astype(np.float32)
    restart = (np.arange(batch) % 2 == 1) if config.use_restart else None
    return state, z, action, restart


def test_dream_step_flops_formula():
    doom = dream_speed.DREAM_GAMES["doom"].flops
    # LSTM 2 (66 + 512) 2048, head 2 · 512 · 961, controller 2 · 1088 · 1
    assert doom == {"lstm": 2_367_488, "mdn_head": 984_064, "controller": 2_176, "total": 3_353_728}
    car = peak.dream_step_flops(32, 3, 256, 288)
    assert car["total"] == 2 * 291 * 1024 + 2 * 256 * 480 + 2 * 288 * 3


def test_parameter_counts_equal_wm_jax():
    torch = pytest.importorskip("torch")
    from benchmarks import torch_reference as tr

    del torch
    vae_params = jax.eval_shape(lambda k: vae.init_params(k, vae.VAEConfig(32)), jax.random.key(0))
    assert vae.num_params(vae_params) == tr.num_trainable(tr.ConvVAE(32)) == 4_348_547
    expected = {"car_racing": 422_368, "doom": 1_678_785}
    for name, count in expected.items():
        config = MDN_CONFIGS[name]
        shapes = jax.eval_shape(lambda k: mdn_rnn.init_params(k, config), jax.random.key(0))
        jax_count = sum(x.size for x in jax.tree.leaves(shapes))
        assert jax_count == tr.num_trainable(tr.MDNRNN.from_config(config)) == count
        c = CONTROLLERS[name]
        torch_c = tr.Controller(c.input_dim, c.action_dim, c.use_bias)
        assert tr.num_trainable(torch_c) == controller.num_params(c)


def test_torch_vae_matches_jax():
    torch = pytest.importorskip("torch")
    from benchmarks import torch_reference as tr

    params = harness.random_params(vae.init_params, vae.VAEConfig(32))
    model = tr.load_vae(tr.ConvVAE(32), params)
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (2, 64, 64, 3)).astype(np.float32)
    z = rng.normal(size=(2, 32)).astype(np.float32)
    mu, logvar = encode(params, x)
    with torch.no_grad():
        torch_mu, torch_logvar = model.encode(torch.from_numpy(np.array(x)).permute(0, 3, 1, 2))
        decoded = model.decode(torch.from_numpy(np.array(z))).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(torch_mu.numpy(), mu, atol=TOL)
    np.testing.assert_allclose(torch_logvar.numpy(), logvar, atol=TOL)
    np.testing.assert_allclose(decoded, decode(params, z), atol=TOL)


@pytest.mark.parametrize("name", sorted(MDN_CONFIGS))
def test_torch_mdn_step_matches_jax(name):
    torch = pytest.importorskip("torch")
    from benchmarks import torch_reference as tr

    config = MDN_CONFIGS[name]
    params = harness.random_params(mdn_rnn.init_params, config)
    model = tr.load_mdn_rnn(tr.MDNRNN.from_config(config), params)
    state, z, action, restart = _inputs(config, batch=4)
    new_state, output = forward_step(config, params, state, z, action, restart)

    def t(x):
        return torch.from_numpy(np.array(x))

    keep = 1.0 if restart is None else t(~restart).float()[:, None]
    with torch.no_grad():
        x = model.inputs(t(z), t(action), None if restart is None else t(restart))
        c, h = model.cell(x, (t(state.c) * keep, t(state.h) * keep))
        torch_output = model.mixture(h)
    np.testing.assert_allclose(c.numpy(), new_state.c, atol=TOL)
    np.testing.assert_allclose(h.numpy(), new_state.h, atol=TOL)
    for field in ("log_pi", "mu", "log_sigma", "done_logit", "reward"):
        np.testing.assert_allclose(
            getattr(torch_output, field).numpy(), getattr(output, field), atol=TOL, err_msg=field
        )


@pytest.mark.parametrize("name", ["car_racing", "doom"])
def test_torch_mdn_sequence_matches_jax(name):
    """Teacher-forced sequences: nn.LSTM (CarRacing) and the restart loop (Doom)."""
    torch = pytest.importorskip("torch")
    from benchmarks import torch_reference as tr

    config = MDN_CONFIGS[name]
    params = harness.random_params(mdn_rnn.init_params, config)
    model = tr.load_mdn_rnn(tr.MDNRNN.from_config(config), params)
    batch = training_speed.sequence_batch(config, 3, 7)
    restarts = np.array(batch.restarts)
    restarts[:, 3] = config.use_restart  # a reset in the middle of every sequence
    z = batch.mu[:, :-1]
    output = forward_sequence(config, params, z, batch.actions, restarts)
    with torch.no_grad():
        torch_output = model.forward_sequence(
            *(torch.from_numpy(np.array(x)) for x in (z, batch.actions, restarts))
        )
    for field in ("log_pi", "mu", "log_sigma", "done_logit"):
        np.testing.assert_allclose(
            getattr(torch_output, field).numpy(), getattr(output, field), atol=TOL, err_msg=field
        )


@pytest.mark.parametrize("name", ["car_racing", "doom"])
def test_torch_controller_matches_jax(name):
    torch = pytest.importorskip("torch")
    from benchmarks import torch_reference as tr

    config = CONTROLLERS[name]
    params = controller.init_params(jax.random.key(0), config)
    model = tr.load_controller(
        tr.Controller(config.input_dim, config.action_dim, config.use_bias), params
    )
    features = jax.random.normal(jax.random.key(1), (5, config.input_dim))
    with torch.no_grad():
        actions = model(torch.from_numpy(np.array(features))).numpy()
    np.testing.assert_allclose(actions, controller.act(config, params, features), atol=TOL)


@pytest.mark.parametrize("name", sorted(MDN_CONFIGS))
def test_numpy_step_matches_jax(name):
    config = MDN_CONFIGS[name]
    c_config = CONTROLLERS[name.removesuffix("_reward")]
    params = harness.random_params(mdn_rnn.init_params, config)
    c_params = controller.init_params(jax.random.key(3), c_config)
    weights = numpy_reference.numpy_weights(params, c_params)
    sizes = numpy_reference.Sizes.from_configs(config, c_config)
    state, z, action, restart = _inputs(config, batch=2)
    new_state, output = forward_step(config, params, state, z, action, restart)
    for i in range(2):
        flag = bool(restart[i]) if restart is not None else False
        c, h = numpy_reference.lstm_step(
            weights, sizes, *(np.array(x[i]) for x in (state.c, state.h, z, action)), flag
        )
        np.testing.assert_allclose(c, new_state.c[i], atol=TOL)
        np.testing.assert_allclose(h, new_state.h[i], atol=TOL)
        log_pi, mu, log_sigma, done, reward = numpy_reference.mixture(weights, sizes, h)
        for ours, theirs in [
            (log_pi, output.log_pi),
            (mu, output.mu),
            (log_sigma, output.log_sigma),
            (done, output.done_logit),
            (reward, output.reward),
        ]:
            np.testing.assert_allclose(ours, theirs[i], atol=TOL)
    features = np.array(jax.random.normal(jax.random.key(4), (c_config.input_dim,)))
    np.testing.assert_allclose(
        numpy_reference.act(weights, features),
        controller.act(c_config, c_params, features),
        atol=TOL,
    )


def _mixture_output(num_latents=2):
    """A fixed two-component mixture per latent: π (0.3, 0.7), μ (-2, 1), σ (0.5, 0.2)."""
    shape = (num_latents, 2)
    log_pi = np.broadcast_to(np.log([0.3, 0.7]), shape).astype(np.float32)
    mu = np.broadcast_to([-2.0, 1.0], shape).astype(np.float32)
    log_sigma = np.broadcast_to(np.log([0.5, 0.2]), shape).astype(np.float32)
    return log_pi, mu, log_sigma


def test_sampling_agrees_across_implementations():
    """τ → 0 picks the likeliest component's mean; at τ = 1 the moments match the mixture's."""
    log_pi, mu, log_sigma = _mixture_output()
    jax_output = mdn_rnn.MDNOutput(log_pi, mu, log_sigma, jnp.zeros(()), jnp.zeros(()))
    rng = np.random.default_rng(0)
    np.testing.assert_allclose(
        mdn_rnn.sample_next(jax.random.key(0), jax_output, 1e-6), 1.0, atol=1e-2
    )
    np.testing.assert_allclose(
        numpy_reference.sample_next(rng, log_pi, mu, log_sigma, 1e-6), 1.0, atol=1e-2
    )
    samples = np.stack(
        [numpy_reference.sample_next(rng, log_pi, mu, log_sigma, 1.0) for _ in range(4000)]
    )
    mean = 0.3 * -2.0 + 0.7 * 1.0
    second = 0.3 * (4.0 + 0.25) + 0.7 * (1.0 + 0.04)
    np.testing.assert_allclose(samples.mean(), mean, atol=0.08)
    np.testing.assert_allclose(samples.var(), second - mean**2, rtol=0.08)
    torch = pytest.importorskip("torch")
    from benchmarks import torch_reference as tr

    t = [torch.from_numpy(np.array(x)) for x in (log_pi, mu, log_sigma)]
    many = tr.MDNOutput(*(x.expand(4000, *x.shape) for x in t), None, None)
    generator = torch.Generator().manual_seed(0)
    torch_samples = tr.sample_next(many, 1.0, generator).numpy()
    np.testing.assert_allclose(torch_samples.mean(), mean, atol=0.08)
    np.testing.assert_allclose(torch_samples.var(), second - mean**2, rtol=0.08)
    tiny_tau = tr.sample_next(tr.MDNOutput(*t, None, None), 1e-6, generator).numpy()
    np.testing.assert_allclose(tiny_tau, 1.0, atol=1e-2)


def test_time_calls_counts_and_median():
    calls = []
    timing = harness.time_calls(lambda: calls.append(1), repeats=3, min_time_s=0.0)
    assert len(calls) == 1 + 3 * timing["calls_per_repeat"]
    assert len(timing["times_s"]) == 3
    assert timing["median_s"] == sorted(timing["times_s"])[1]


def _synthetic_record(torch_ratio, fraction, vae_ratio):
    rows = [
        {
            "impl": "wm_jax:dream",
            "batch": 1024,
            "num_steps": 10,
            "steps_per_s": 100.0,
            "gflops": 1.0,
            "fraction_of_peak": fraction,
            "compile_s": 1.0,
        },
        {
            "impl": "torch_eager",
            "batch": 1024,
            "num_steps": 10,
            "steps_per_s": 100.0 / torch_ratio,
            "gflops": 0.5,
            "fraction_of_peak": 0.1,
            "torch_threads": 2,
        },
        {  # the slower torch setting is not the reference
            "impl": "torch_eager_1thread",
            "batch": 1024,
            "num_steps": 10,
            "steps_per_s": 10.0 / torch_ratio,
            "gflops": 0.05,
            "fraction_of_peak": 0.01,
            "torch_threads": 1,
        },
    ]
    numpy_row = {
        "workers": 2,
        "rollout_steps": 5,
        "steps_per_s": 10.0,
        "gflops": 0.1,
        "fraction_of_peak": 0.01,
    }
    game = {
        "flops_per_step": {"total": 10},
        "flops_formula": "f",
        "temperature": 1.15,
        "rows": rows,
        "numpy": numpy_row,
        "peak_steps_per_s": 1000.0,
    }
    machine = peak.machine_info()
    return {
        "name": "synthetic",
        "machine": machine,
        "settings": {"name": "tiny"},
        "dream": {"doom": game},
        "vae": {
            "batch": 2,
            "wm_jax": {"images_per_s": vae_ratio, "compile_s": 1.0},
            "torch_eager": {"images_per_s": 1.0},
        },
    }


def test_goals_pass_and_miss(tmp_path):
    record = _synthetic_record(torch_ratio=2.0, fraction=0.5, vae_ratio=0.9)
    record["goals"] = goals.goals(record)
    results = {g["goal"]: g for g in record["goals"]}
    assert [g["pass"] for g in record["goals"]] == [True, False, True, False]
    assert results["Dream, Doom-sized, batch 1024: steps/s vs eager PyTorch"]["measured"] == 2.0
    assert (
        results["Dream, Doom-sized, batch 1024: steps/s vs NumPy, 1 rollout/process on every core"][
            "measured"
        ]
        == 10.0
    )
    paths = report.write_outputs(record, tmp_path)
    markdown = paths["md"].read_text()
    assert "| PASS |" in markdown and "| MISS |" in markdown
    assert json.loads(paths["json"].read_text())["goals"] == record["goals"]
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths.values())


def _check_files(record, out_dir):
    files = {key: Path(path) for key, path in record["files"].items()}
    assert files["json"].parent == out_dir and files["json"].name == f"{record['name']}.json"
    saved = json.loads(files["json"].read_text())
    assert saved["name"] == record["name"] and saved["errors"] == {}
    assert files["md"].read_text().startswith(f"# wm_jax benchmarks: {record['name']}")
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".")]  # no temp files left
    return saved


def test_tiny_dream_run(tmp_path):
    record = run.run(run.TINY, ("dream",), out_dir=tmp_path)
    saved = _check_files(record, tmp_path)
    assert {"machine", "settings", "peak", "dream", "goals", "errors"} <= set(saved)
    assert {"cpu_model", "cores_usable", "jax", "torch", "jax_backend"} <= set(saved["machine"])
    assert saved["peak"]["peak_gflops"] > 0
    for name in ("doom", "car_racing"):
        game = saved["dream"][name]
        impls = {row["impl"] for row in game["rows"]}
        assert {"wm_jax:dream", "wm_jax:batched"} <= impls
        for row in game["rows"]:
            assert row["steps_per_s"] > 0 and row["fraction_of_peak"] > 0
            assert {"batch", "num_steps", "median_s", "times_s", "gflops"} <= set(row)
        assert game["numpy"]["steps_per_s"] > 0 and game["numpy"]["workers"] == 1
        assert game["gemm_breakdown"]["matmul_only_steps_per_s"] > 0
    assert Path(record["files"]["png"]).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow  # four XLA compiles of training steps and a CMA-ES generation: about a minute
def test_tiny_training_and_cma_run(tmp_path):
    record = run.run(run.TINY, ("cma", "vae", "mdn"), out_dir=tmp_path)
    saved = _check_files(record, tmp_path)
    assert saved["cma"]["seconds_per_generation"] > 0 and saved["cma"]["compile_s"] > 0
    assert saved["vae"]["wm_jax"]["images_per_s"] > 0
    for game in ("car_racing", "doom"):
        assert saved["mdn"][game]["wm_jax"]["timesteps_per_s"] > 0
        assert saved["mdn"][game]["seq_len"] == run.TINY.mdn_seq_len[game]
    goal_names = [g["goal"] for g in saved["goals"]]
    assert "V training images/s vs eager PyTorch" in goal_names
    if saved["machine"]["torch"] is not None:
        assert saved["vae"]["ratio_vs_torch"] > 0
        assert all(g["pass"] is not None for g in saved["goals"])


def test_cli_rejects_unknown_section():
    with pytest.raises(SystemExit):
        run.main(["--tiny", "--only", "dream,nonsense"])


def test_device_overhead_measures_and_compares_alternating_processes(monkeypatch):
    from benchmarks import device_overhead

    rates = device_overhead.measure(tiny=True)  # this process's devices, the library's paths
    names = {"V train images/s", "M train timesteps/s", "CMA-ES dream steps/s"}
    assert set(rates) == names | {"devices"} and all(rates[n] > 0 for n in names)
    order = []

    def fake_worker(count, tiny):  # a process per count; 4 devices at 95 % of one's rate
        order.append(count)
        return {n: rates[n] * (0.95 if count > 1 else 1.0) for n in names} | {"devices": count}

    monkeypatch.setattr(device_overhead, "_worker", fake_worker)
    record = device_overhead.run(devices=4, rounds=2, tiny=True)
    assert order == [1, 4, 1, 4]
    assert record["ratio"] == pytest.approx(dict.fromkeys(names, 0.95)) and record["pass"]


def test_xla_flag_sets_each_run_in_their_own_process_against_the_default():
    from benchmarks import xla_flags

    sets = {"default": "", "bad": "--no_such_xla_flag"}
    record = xla_flags.run(tiny=True, flag_sets=sets, rounds=1)
    rows = record["rows"]
    assert rows["default"]["vae_images_vs_default"] == 1.0
    assert rows["default"]["mdn_doom_timesteps_vs_default"] == 1.0
    assert rows["default"]["dream_doom_steps_per_s"] > 0
    assert "error" in rows["bad"]  # XLA refuses an unknown flag at start-up: recorded
    assert set(xla_flags.FLAG_SETS) >= {"default", "onednn", "xnnpack"}


def test_step_breakdown_times_every_cumulative_part(tmp_path):
    from benchmarks import step_breakdown

    step_breakdown.main(["--tiny", "--only", "mdn", "--out-dir", str(tmp_path)])
    (written,) = tmp_path.glob("*-breakdown-tiny.json")
    rows = json.loads(written.read_text())["median_s"]
    assert set(rows) == {"mdn_car_racing", "mdn_doom"}
    for name, parts in rows.items():
        game = name.removeprefix("mdn_")
        jax_parts = sorted(k for k in parts if k.startswith("jax "))
        assert [k.split(" ")[1] for k in jax_parts] == ["1", "2", "3", "4"], jax_parts
        assert all(f"({game}" in k for k in jax_parts)
        assert all(v > 0 for v in parts.values())
    table = step_breakdown.markdown(rows)
    assert table.count("\n") == 1 + 8  # header, rule, four parts per game


def test_vae_library_times_both_choices_of_each_program(tmp_path, capsys):
    from benchmarks import vae_library

    vae_library.main(["--tiny", "--out-dir", str(tmp_path)])
    (path,) = tmp_path.glob("*-vae-library-tiny.json")
    record = json.loads(path.read_text())
    programs = ["V train step", "V encode", "M train step car_racing", "M train step doom"]
    assert set(record["timings"]) == {f"{p}, {c}" for p in programs for c in ("eigen", "xla")}
    assert all(t["median_s"] > 0 for t in record["timings"].values())
    assert record["auto"] == kernels.active().vae_library
    table = capsys.readouterr().out
    assert all(f"| {p} |" in table for p in programs)


def test_op_profile_maps_thunks_to_the_model_s_operations(tmp_path, capsys):
    from benchmarks import op_profile

    out = tmp_path / "profile.json"
    op_profile.main(["vae", "--steps", "1", "--batch", "2", "--top", "5", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["program"] == "vae" and result["step_ms"] > 0
    sources = [row["from"] for row in result["ops"]]
    assert any("Encoder" in s for s in sources) and any("Decoder" in s for s in sources)
    assert all(row["ms"] >= 0 for row in result["ops"])
    assert capsys.readouterr().out.count("\n| ") == 1 + 5  # the header, then the top 5 ops


def test_op_profile_times_asynchronous_thunks_to_their_end():
    from benchmarks import op_profile

    events = [
        {"ph": "X", "name": "conv.1", "ts": 0.0, "dur": 1.0},  # launched, runs on
        {"ph": "X", "name": "fusion.2", "ts": 2.0, "dur": 3.0},
        {"ph": "X", "name": "end: conv.1", "ts": 9.0, "dur": 1.0},
        {"ph": "X", "name": "not an op", "ts": 0.0, "dur": 50.0},
    ]
    times = op_profile.thunk_times(events, {"conv.1": (), "fusion.2": ()})
    assert times == {"conv.1": 1.0 + 9.0, "fusion.2": 3.0}
