"""A scaling report written out: plots, Markdown, JSON, TensorBoard images."""
