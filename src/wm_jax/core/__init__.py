"""Pieces below everything else: atomic files and orbax checkpoints (`checkpoint`), symlinked
shared folders (`links`), process-wide speed settings and peak memory (`runtime`), and data
parallelism over every device (`devices`), several processes as one program (`distributed`)."""
