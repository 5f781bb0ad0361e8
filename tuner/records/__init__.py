"""The records: the results ledger, its rows and how it names cells. Importing them loads neither Ray nor JAX."""
