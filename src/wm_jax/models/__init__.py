"""The networks (World Models §2): V, the convolutional VAE (`vae`, with `strided_conv`); M, the
MDN-RNN (`mdn_rnn`, on `lstm`); and C, the controller on [z, h] (`controller`)."""
