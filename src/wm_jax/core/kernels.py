"""Which implementation each backend gets where the fastest one depends on the backend.

Four choices, each made from `jax.default_backend()` unless the experiment config names one
(`--set kernels.vae_layers=flax`; the `kernels` section of `wm_jax.pipeline.config`):

- `vae_layers`: V's stride-2 layers. "fast" computes them as stride-1 convolutions with
  hand-written gradients (`wm_jax.models.strided_conv`); "flax" is `nn.Conv` /
  `nn.ConvTranspose`. Same function, same parameters (tests/test_vae.py).
- `lstm`: M's LSTM over a sequence. "fused" has a cuDNN-style backward pass (one matmul for the
  kernel's gradient, `wm_jax.models.lstm.lstm_layer`); "scan" is autodiff of `lax.scan`. Same
  values and gradients (tests/test_lstm.py).
- `es_blas_threads`: BLAS threads while CMA-ES runs (its covariance decomposition); 0 leaves
  the library's default.
- `vae_library`: which of XLA:CPU's libraries runs V's programs (its train step, the encoding
  of a store, V inside a real-game policy step). "eigen" compiles them with XLA:CPU's YNNPACK
  fusions off (`xla_cpu_experimental_ynn_fusion_type` empty), so convolutions and matmuls run
  in XLA's Eigen runtime; "xla" keeps XLA's own default (since jax 0.10 on a CPU, YNNPACK for
  most convolutions and dots). A per-program compiler option, never a process-wide flag: M's
  programs and the dream keep the default.

What "auto" means per backend, and the measurement behind it:

- cpu: vae_layers "fast" (3.5× V training, benchmarks/vae_decoder_profile.py); lstm "fused"
  (+10-25 % M training, −25 % memory, benchmarks/mdn_rnn_profile.py); es_blas_threads 1 (9.0 s
  → 0.13 s per decomposition at D = 1,088: OpenBLAS's threads fight XLA's).
  vae_library "eigen" (`benchmarks/vae_library.py`, jax 0.10.2, 2-core AMD EPYC, both
  settings alternately in one process: V's train step 486 -> 333 ms at batch 100, 1.46x; the
  encoding of 1,024 frames 1,448 -> 286 ms, 5.1x; M's train step within 1 % either way, so M
  keeps the default). YNNPACK ran V's convolutions at 16-97 GFLOP/s (`benchmarks/op_profile.py`;
  benchmarks/README.md).
- gpu, tpu: vae_layers "flax", lstm "fused", es_blas_threads 0, vae_library "xla".

The GPU and TPU rows are not measured yet (no accelerator has been lent to this project):
"fast" exists only because XLA:CPU lowers strided and transposed convolutions' gradients to slow
dilated convolutions, which cuDNN and the TPU's convolution units do not; the fused LSTM
backward is what cuDNN itself does; CMA-ES's decomposition runs on the device there, not in
OpenBLAS. `benchmarks/device_suite.py` times V and M training with both choices on a device, so
the first GPU record decides these rows.

glibc's malloc tuning (`wm_jax.core.runtime.tune_malloc`) is not here: it must take effect
before XLA's first allocation, i.e. before a config is read, so it is set by `WM_JAX_MALLOC`.
On an accelerator it changes only host-side allocations.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterator

import jax

AUTO = "auto"
CHOICES = {
    "vae_layers": (AUTO, "fast", "flax"),
    "lstm": (AUTO, "fused", "scan"),
    "vae_library": (AUTO, "eigen", "xla"),
}
# XLA:CPU's DebugOptions field that routes ops to YNNPACK; an empty list turns it off.
_YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"


@dataclasses.dataclass(frozen=True)
class KernelsConfig:
    """The `kernels` section of an experiment config: "auto" takes the backend's row above."""

    vae_layers: str = AUTO  # auto, fast (stride-1 rewrite), flax (nn.Conv / nn.ConvTranspose)
    lstm: str = AUTO  # auto, fused (cuDNN-style backward), scan (autodiff of lax.scan)
    es_blas_threads: int = -1  # -1 auto; 0 the BLAS library's default; N threads
    vae_library: str = AUTO  # auto, eigen (XLA:CPU without YNNPACK fusions), xla (its default)


_BY_BACKEND = {
    "cpu": KernelsConfig(vae_layers="fast", lstm="fused", es_blas_threads=1, vae_library="eigen"),
    "accelerator": KernelsConfig(
        vae_layers="flax", lstm="fused", es_blas_threads=0, vae_library="xla"
    ),
}
_active = KernelsConfig()


def check(config: KernelsConfig) -> None:
    """A ValueError naming the field for a choice that does not exist."""
    for name, allowed in CHOICES.items():
        value = getattr(config, name)
        if value not in allowed:
            raise ValueError(f"kernels.{name}={value!r}: allowed values are {allowed}")
    if not isinstance(config.es_blas_threads, int) or config.es_blas_threads < -1:
        raise ValueError(
            f"kernels.es_blas_threads={config.es_blas_threads!r}: -1 (auto), 0 (the BLAS "
            "library's default) or a number of threads"
        )


def for_backend(backend: str | None = None) -> KernelsConfig:
    """The "auto" row of `backend` (default: JAX's default backend)."""
    backend = backend or jax.default_backend()
    return _BY_BACKEND["cpu" if backend == "cpu" else "accelerator"]


def resolve(config: KernelsConfig, backend: str | None = None) -> KernelsConfig:
    """`config` with every "auto" (and es_blas_threads -1) replaced by the backend's choice."""
    check(config)
    row = for_backend(backend)
    return KernelsConfig(
        vae_layers=row.vae_layers if config.vae_layers == AUTO else config.vae_layers,
        lstm=row.lstm if config.lstm == AUTO else config.lstm,
        vae_library=row.vae_library if config.vae_library == AUTO else config.vae_library,
        es_blas_threads=(
            row.es_blas_threads if config.es_blas_threads == -1 else config.es_blas_threads
        ),
    )


def use(config: KernelsConfig) -> None:
    """Make `config` this process's choice (the pipeline calls it with the run's config).

    Read when a function is traced: a function already traced (JAX caches traces per function
    object) keeps the implementation it was traced with.
    """
    global _active
    check(config)
    _active = config


@contextlib.contextmanager
def using(config: KernelsConfig) -> Iterator[None]:
    """`use(config)` for the `with` block only (benchmarks time both choices this way)."""
    global _active
    previous = _active
    use(config)
    try:
        yield
    finally:
        _active = previous


def active() -> KernelsConfig:
    """This process's choice, resolved for JAX's default backend."""
    return resolve(_active)


def cache_per_choice(maxsize: int | None = None) -> Callable[[Callable], Callable]:
    """`functools.lru_cache` whose key includes `active()`: a builder of jitted functions,
    cached so that equal configs never retrace, must not hand back a function traced under
    another choice (an earlier run's, a benchmark's) after `use` changed it."""

    def decorate(build: Callable) -> Callable:
        @functools.lru_cache(maxsize)
        def by_choice(choice: KernelsConfig, *args, **kwargs):
            del choice  # part of the cache key only; the build reads `active()` when traced
            return build(*args, **kwargs)

        @functools.wraps(build)
        def cached(*args, **kwargs):
            return by_choice(active(), *args, **kwargs)

        cached.cache_clear = by_choice.cache_clear
        return cached

    return decorate


def vae_compiler_options() -> dict[str, str] | None:
    """`jax.jit(..., compiler_options=...)` for V's programs under the active `vae_library`.

    None (XLA's defaults) for "xla", and also for "eigen" where this jaxlib does not know the
    option (it is experimental: an older or newer XLA may lack it; then V runs as XLA chooses).
    """
    if active().vae_library != "eigen" or not _option_supported(_YNN_OPTION, ""):
        return None
    return {_YNN_OPTION: ""}


def jit_vae(fn: Callable, **jit_kwargs) -> Callable:
    """``jax.jit(fn, **jit_kwargs)`` compiled with `vae_compiler_options` (read now, at the
    call: build the jitted function after `use`, as the cached builders do)."""
    return jax.jit(fn, compiler_options=vae_compiler_options(), **jit_kwargs)


@functools.cache
def _option_supported(name: str, value: str) -> bool:
    try:
        jax.jit(lambda x: x + 1, compiler_options={name: value}).lower(1.0).compile()
    except Exception:  # jaxlib's error for an unknown option or value (its type varies)
        return False
    return True
