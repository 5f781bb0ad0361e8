"""Declarative search spaces and presets for nfscale studies."""
