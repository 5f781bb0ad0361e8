"""The jobs the commands run as Ray Tune experiments: a sweep, an LR search, a promotion."""
