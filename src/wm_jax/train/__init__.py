"""Fitting V to frames (`vae_train`) and M to encoded episodes (`mdn_rnn_train`), and the pieces
every training loop shares: metrics files, NaN checks, checkpoints every N steps
(`training_loop`)."""
