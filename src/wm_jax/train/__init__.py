"""Fitting M to encoded episodes (`mdn_rnn_train`) and the pieces every training loop shares:
metrics files, NaN checks, checkpoints every N steps (`training_loop`). V's training step lives
beside V in `wm_jax.models.vae`."""
