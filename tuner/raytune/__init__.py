"""The Ray side: connection, storage, the trainable, TPU-slice trials, the compile cache, callbacks, schedulers, the budget, the LR search's searcher."""
