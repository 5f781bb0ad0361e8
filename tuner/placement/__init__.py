"""Where a trial runs: its Ray resources, its device memory, TPU v4 slice shapes."""
