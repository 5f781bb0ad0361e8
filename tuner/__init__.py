"""The Ray layer of nfscale: LR search, sweeps, the ledger, promotion, reports."""
