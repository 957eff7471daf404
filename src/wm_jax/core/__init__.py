"""Pieces below everything else: atomic files and orbax checkpoints (`checkpoint`), symlinked
shared folders (`links`), process-wide speed settings and peak memory (`runtime`), and data
parallelism over the local devices (`devices`)."""
