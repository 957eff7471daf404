"""Fitting V to frames (`vae_train`) and M to encoded episodes (`mdn_rnn_train`), and the one
host loop both train through (`training_loop.run`: metrics files, NaN checks, checkpoints every
N steps, resume).

The train states are small `flax.struct` dataclasses (params, opt_state, step; M adds the
carried LSTM state) rather than `flax.training.train_state.TrainState`: the optimizer lives in
the cached, jitted step (`make_train`), so a state is pure data that orbax saves and restores
as it is, and every earlier run's checkpoints restore into the same structure.
"""
