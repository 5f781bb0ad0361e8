"""The study's logic over ledger rows: the LR planner, the LR audit, the scaling fits and a report's analysis. Importing them loads neither Ray nor JAX."""
