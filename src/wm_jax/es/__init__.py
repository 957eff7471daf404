"""C trained by CMA-ES (World Models §3; evosax): in the dream, one jitted program per
generation (`evolve`); in the real game through worker processes (`evolve_real`); the host loop
both share, which logs, evaluates the ES mean and checkpoints (`evolve_loop`)."""
