"""NFNets in JAX/Flax: variants, model, optimizers, data and the train loop. No Ray here."""
