"""Eager PyTorch versions of V, M and C, written the way a PyTorch user would write them.

The networks are exactly wm_jax's (same layers, same parameter counts, same numbers given the same
weights: see `load_vae`, `load_mdn_rnn`, `load_controller` and tests/test_benchmarks.py):

- `ConvVAE`: conv k4 s2 32/64/128/256 + dense μ / log σ²; dense → 1024 → deconv 128 k5, 64 k5,
  32 k6, 3 k6 (sigmoid), stride 2 (World Models, Appendix). NCHW, as torch users write it.
- `MDNRNN`: `nn.LSTM` + a dense head to Z·K·3 (+1 done logit). `nn.LSTM` carries a second bias
  (`bias_hh`) that wm_jax's single-bias LSTM has not: it is frozen at zero, so the trainable
  parameters (and their count) are the same. Sequences without restarts go through `nn.LSTM`'s
  fused C++ loop; with restarts (Doom) a Python loop over time zeroes the state, as it must.
- `Controller`: tanh(W [z, (c,) h] (+ b)).

The dream is stepped one Python iteration per step over a batch of rollouts under
`torch.no_grad()`, with manual sampling (inverse-CDF mixture choice, then Gaussian noise).
Nothing here is imported by wm_jax; torch is optional for the benchmarks.
"""

from __future__ import annotations

import math
import os
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 - the usual torch alias

# Same constants as wm_jax.models.mdn_rnn: σ smoothly bounded to [e^-7, e^2]; τ floored.
LOG_SIGMA_MIN = -7.0
LOG_SIGMA_MAX = 2.0
MIN_TEMPERATURE = 1e-6
ENCODER_FILTERS = (32, 64, 128, 256)
DECODER_LAYERS = ((128, 5), (64, 5), (32, 6), (3, 6))


def use_all_cores() -> int:
    """torch.set_num_threads(os.cpu_count()); returns the thread count."""
    torch.set_num_threads(os.cpu_count() or 1)
    return torch.get_num_threads()


def num_trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------------------------
# V


class ConvVAE(nn.Module):
    """x (B, 3, 64, 64) in [0, 1] ↔ z (B, Z)."""

    def __init__(self, latent_dim: int = 32):
        super().__init__()
        channels = (3, *ENCODER_FILTERS)
        self.encoder = nn.ModuleList(
            nn.Conv2d(c_in, c_out, 4, stride=2) for c_in, c_out in zip(channels, channels[1:])
        )
        self.mu = nn.Linear(1024, latent_dim)
        self.logvar = nn.Linear(1024, latent_dim)
        self.fc = nn.Linear(latent_dim, 1024)
        c_in = 1024
        self.decoder = nn.ModuleList()
        for c_out, kernel in DECODER_LAYERS:
            self.decoder.append(nn.ConvTranspose2d(c_in, c_out, kernel, stride=2))
            c_in = c_out

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for conv in self.encoder:
            x = F.relu(conv(x))
        x = x.flatten(1)  # (B, 256 · 2 · 2), channel-major
        return self.mu(x), self.logvar(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(-1, 1024, 1, 1)
        for i, deconv in enumerate(self.decoder):
            x = deconv(x)
            x = torch.sigmoid(x) if i == len(self.decoder) - 1 else F.relu(x)
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        return self.decode(z), mu, logvar


def vae_loss(x, x_hat, mu, logvar, kl_tolerance: float = 0.5) -> torch.Tensor:
    """World Models, Appendix: summed squared error + max(KL, kl_tolerance · Z), batch mean."""
    recon = torch.sum(torch.square(x - x_hat), dim=(1, 2, 3))
    kl = -0.5 * torch.sum(1.0 + logvar - torch.square(mu) - torch.exp(logvar), dim=1)
    return torch.mean(recon + torch.clamp(kl, min=kl_tolerance * mu.shape[1]))


def make_vae_train_step(model: ConvVAE, learning_rate: float = 1e-4):
    """train_step(frames uint8 (B, 64, 64, 3) tensor) -> loss, one Adam step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)

    def train_step(frames: torch.Tensor) -> torch.Tensor:
        x = frames.permute(0, 3, 1, 2).float().div_(255.0)
        x_hat, mu, logvar = model(x)
        loss = vae_loss(x, x_hat, mu, logvar)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return train_step


# ---------------------------------------------------------------------------------------------
# M


class MDNOutput(NamedTuple):
    log_pi: torch.Tensor  # (..., Z, K)
    mu: torch.Tensor  # (..., Z, K)
    log_sigma: torch.Tensor  # (..., Z, K)
    done_logit: torch.Tensor  # (...,) zeros without a done head
    reward: torch.Tensor  # (...,) zeros without a reward head


def _bound_log_sigma(raw: torch.Tensor) -> torch.Tensor:
    lower = LOG_SIGMA_MIN + F.softplus(raw - LOG_SIGMA_MIN)
    return LOG_SIGMA_MAX - F.softplus(LOG_SIGMA_MAX - lower)


class MDNRNN(nn.Module):
    """LSTM over [z, a (, restart)] and a mixture-density head (World Models §2.2)."""

    def __init__(
        self,
        latent_dim: int = 32,
        action_dim: int = 3,
        hidden_size: int = 256,
        num_mixtures: int = 5,
        use_restart: bool = False,
        predict_done: bool = False,
        predict_reward: bool = False,
    ):
        super().__init__()
        self.latent_dim, self.action_dim = latent_dim, action_dim
        self.hidden_size, self.num_mixtures = hidden_size, num_mixtures
        self.use_restart, self.predict_done = use_restart, predict_done
        self.predict_reward = predict_reward
        input_size = latent_dim + action_dim + int(use_restart)
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True)
        # One bias, as wm_jax (and TF's LSTMCell in the authors' code): freeze the second at 0.
        with torch.no_grad():
            self.lstm.bias_hh_l0.zero_()
        self.lstm.bias_hh_l0.requires_grad_(False)
        out = latent_dim * num_mixtures * 3 + int(predict_done) + int(predict_reward)
        self.head = nn.Linear(hidden_size, out)

    @classmethod
    def from_config(cls, config: Any) -> MDNRNN:
        """From a wm_jax.models.mdn_rnn.MDNRNNConfig."""
        return cls(
            config.latent_dim,
            config.action_dim,
            config.hidden_size,
            config.num_mixtures,
            config.use_restart,
            config.predict_done,
            config.predict_reward,
        )

    def inputs(self, z, action, restart=None) -> torch.Tensor:
        parts = [z, action]
        if self.use_restart:
            flag = torch.zeros(z.shape[:-1]) if restart is None else restart.to(z.dtype)
            parts.append(flag.unsqueeze(-1))
        return torch.cat(parts, dim=-1)

    def cell(self, x, state):
        """One LSTM step: x (B, in), state (c, h) (B, H) each -> (c, h)."""
        c, h = state
        h, c = torch.lstm_cell(
            x,
            (h, c),
            self.lstm.weight_ih_l0,
            self.lstm.weight_hh_l0,
            self.lstm.bias_ih_l0,
            self.lstm.bias_hh_l0,
        )
        return c, h

    def mixture(self, h: torch.Tensor) -> MDNOutput:
        out = self.head(h)
        size = self.latent_dim * self.num_mixtures * 3
        # World Models code layout: per latent dimension [logits (K), μ (K), log σ (K)].
        mix = out[..., :size].reshape(*out.shape[:-1], self.latent_dim, 3 * self.num_mixtures)
        logits, mu, raw_log_sigma = mix.split(self.num_mixtures, dim=-1)
        zeros = torch.zeros(out.shape[:-1])
        done = out[..., size] if self.predict_done else zeros
        reward = out[..., size + int(self.predict_done)] if self.predict_reward else zeros
        log_sigma = _bound_log_sigma(raw_log_sigma)
        return MDNOutput(F.log_softmax(logits, -1), mu, log_sigma, done, reward)

    def forward_sequence(self, z, actions, restarts=None) -> MDNOutput:
        """Teacher-forced pass over (B, T, ...) from a zero state."""
        x = self.inputs(z, actions, restarts)
        if restarts is None or not self.use_restart:
            hidden, _ = self.lstm(x)
        else:
            batch, steps = x.shape[:2]
            c = h = torch.zeros(batch, self.hidden_size)
            keep = (~restarts.bool()).to(x.dtype).unsqueeze(-1)  # (B, T, 1)
            outs = []
            for t in range(steps):
                c, h = self.cell(x[:, t], (c * keep[:, t], h * keep[:, t]))
                outs.append(h)
            hidden = torch.stack(outs, dim=1)
        return self.mixture(hidden)


def sample_next(output: MDNOutput, temperature: float, generator=None) -> torch.Tensor:
    """z(t+1) at τ: component by inverse CDF of softmax(log π / τ), then μ + σ √τ ε."""
    temperature = max(float(temperature), MIN_TEMPERATURE)
    probs = torch.softmax(output.log_pi / temperature, dim=-1)  # (B, Z, K)
    u = torch.rand(probs.shape[:-1] + (1,), generator=generator)
    component = (probs.cumsum(-1) < u).sum(-1, keepdim=True).clamp_(max=probs.shape[-1] - 1)
    mu = output.mu.gather(-1, component).squeeze(-1)
    log_sigma = output.log_sigma.gather(-1, component).squeeze(-1)
    noise = torch.randn(mu.shape, generator=generator)
    return mu + torch.exp(log_sigma) * math.sqrt(temperature) * noise


def mixture_nll(output: MDNOutput, z: torch.Tensor) -> torch.Tensor:
    """-log p(z) per latent dimension (..., Z)."""
    scaled = (z.unsqueeze(-1) - output.mu) * torch.exp(-output.log_sigma)
    log_normal = -0.5 * scaled.square() - output.log_sigma - 0.5 * math.log(2 * math.pi)
    return -torch.logsumexp(output.log_pi + log_normal, dim=-1)


def make_mdn_train_step(
    model: MDNRNN, learning_rate: float = 1e-3, grad_clip: float = 1.0, done_pos_weight=10.0
):
    """train_step(mu, logvar (B,T+1,Z), actions (B,T,A), restarts, dones (B,T)) -> loss."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=learning_rate)
    pos_weight = torch.tensor(done_pos_weight)

    def train_step(mu, logvar, actions, restarts, dones) -> torch.Tensor:
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        output = model.forward_sequence(z[:, :-1], actions, restarts)
        loss = mixture_nll(output, z[:, 1:]).mean()
        if model.predict_done:
            loss = loss + F.binary_cross_entropy_with_logits(
                output.done_logit, dones.float(), pos_weight=pos_weight
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        return loss.detach()

    return train_step


# ---------------------------------------------------------------------------------------------
# C and the dream


class Controller(nn.Module):
    """a = tanh(W [z, (c,) h] (+ b))."""

    def __init__(self, input_dim: int, action_dim: int, use_bias: bool = True):
        super().__init__()
        self.linear = nn.Linear(input_dim, action_dim, bias=use_bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.linear(features))


@torch.no_grad()
def dream_rollout(
    model: MDNRNN,
    controller: Controller,
    z0: torch.Tensor,
    num_steps: int,
    temperature: float,
    inputs: tuple[str, ...] = ("z", "h"),
    reward: str = "survival",
    generator=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of dream rollouts, one Python iteration per step, until done or `num_steps`.

    Every step runs for every rollout (a batch is stepped in lockstep); returns and lengths stop
    counting at done (the same valid mask as wm_jax.dream.rollout.rollout).

    Args:
      z0: (B, Z) first latent codes.
      reward: "survival" (+1 per step alive, Doom) or "model" (M's reward head, CarRacing).
    Returns:
      (episode_return (B,), length (B,)).
    """
    batch = z0.shape[0]
    c = torch.zeros(batch, model.hidden_size)
    h = torch.zeros(batch, model.hidden_size)
    z = z0
    restart = torch.ones(batch)
    alive = torch.ones(batch, dtype=torch.bool)
    episode_return = torch.zeros(batch)
    length = torch.zeros(batch, dtype=torch.int32)
    for _ in range(num_steps):
        features = {"z": z, "c": c, "h": h}
        action = controller(torch.cat([features[name] for name in inputs], dim=-1))
        c, h = model.cell(model.inputs(z, action, restart), (c, h))
        output = model.mixture(h)
        z = sample_next(output, temperature, generator)
        step_reward = output.reward if reward == "model" else 1.0
        episode_return += torch.where(alive, step_reward, 0.0)
        length += alive
        if model.predict_done:
            alive &= output.done_logit <= 0
        restart = torch.zeros(batch)
    return episode_return, length


# ---------------------------------------------------------------------------------------------
# Weights from wm_jax's parameter pytrees (flax layouts).


def _tensor(array) -> torch.Tensor:
    return torch.from_numpy(np.array(array, dtype=np.float32))


@torch.no_grad()
def load_vae(model: ConvVAE, params: Any) -> ConvVAE:
    """Copy wm_jax.models.vae params (flax NHWC / HWIO) into `model` (NCHW / OIHW)."""
    encoder, decoder = params["encoder"], params["decoder"]
    for i, conv in enumerate(model.encoder):
        conv.weight.copy_(_tensor(encoder[f"conv{i}"]["kernel"]).permute(3, 2, 0, 1))
        conv.bias.copy_(_tensor(encoder[f"conv{i}"]["bias"]))
    for name in ("mu", "logvar"):
        # flax flattens (2, 2, 256) height-major, torch (256, 2, 2) channel-major.
        kernel = _tensor(encoder[name]["kernel"]).reshape(2, 2, 256, -1).permute(2, 0, 1, 3)
        getattr(model, name).weight.copy_(kernel.reshape(1024, -1).T)
        getattr(model, name).bias.copy_(_tensor(encoder[name]["bias"]))
    model.fc.weight.copy_(_tensor(decoder["fc"]["kernel"]).T)
    model.fc.bias.copy_(_tensor(decoder["fc"]["bias"]))
    for i, deconv in enumerate(model.decoder):
        # flax ConvTranspose (transpose_kernel=False) scatters with the flipped kernel.
        kernel = _tensor(decoder[f"deconv{i}"]["kernel"]).flip(0, 1)
        deconv.weight.copy_(kernel.permute(2, 3, 0, 1))
        deconv.bias.copy_(_tensor(decoder[f"deconv{i}"]["bias"]))
    return model


@torch.no_grad()
def load_mdn_rnn(model: MDNRNN, params: Any) -> MDNRNN:
    """Copy wm_jax.models.mdn_rnn params (fused kernel over [x, h], gates i, f, g, o) into
    `model`."""
    kernel = _tensor(params["lstm"]["kernel"])  # (in + H, 4H)
    num_inputs = kernel.shape[0] - model.hidden_size
    model.lstm.weight_ih_l0.copy_(kernel[:num_inputs].T)
    model.lstm.weight_hh_l0.copy_(kernel[num_inputs:].T)
    model.lstm.bias_ih_l0.copy_(_tensor(params["lstm"]["bias"]))
    model.lstm.bias_hh_l0.zero_()
    model.head.weight.copy_(_tensor(params["head"]["kernel"]).T)
    model.head.bias.copy_(_tensor(params["head"]["bias"]))
    return model


@torch.no_grad()
def load_controller(model: Controller, params: Any) -> Controller:
    """Copy wm_jax.models.controller linear params ({"w": (in, A), "b": (A,)})."""
    model.linear.weight.copy_(_tensor(params["w"]).T)
    if model.linear.bias is not None:
        model.linear.bias.copy_(_tensor(params["b"]))
    return model
