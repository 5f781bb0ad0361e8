"""Image datasets and the deterministic, resumable loader.

Sources (`load_dataset(spec, split)`, split `train` or `test`):
- `fashion_mnist`: the IDX files of Debian's `dataset-fashion-mnist` (/usr/share/datasets/
  fashion-mnist), or `data_dir` / $NFSCALE_FASHION_MNIST_DIR; 60000/10000 28×28 grayscale.
- `digits`: scikit-learn's 8×8 digits, a fixed stratified 80/20 split (1437/360).
- `synthetic[:n=..,n_test=..,classes=..,size=..,channels=..,seed=..]`: procedural gratings, any size.
- `parquet:<path|gs://uri>`: Hugging Face style shards (`image` {bytes, path} or binary, `label`),
  split by shard name (`train*`, `test*`, else `validation*`), streamed row group by row group
  (nfnet.data.stream: its own order, in bounded memory).
- `imagefolder:<dir>`: `<dir>/<split>/<class>/*.png|jpg`, classes in sorted name order.

Order guarantee: epoch e visits examples in `epoch_permutation(seed, e, n)`; step s takes positions
[(s % spe)·B, (s % spe + 1)·B) of epoch s // spe with spe = n // B; augmentation is keyed by
(seed, epoch, example index). So each example is seen at most once per epoch, every process
of a multi-host run takes its own contiguous slice of each global batch, and a run resumed at
step k sees exactly the batches an uninterrupted run sees from step k. A streamed split keeps that
guarantee with a row-group order (nfnet.data.stream's docstring).
"""

from nfnet.data.dataset import ArrayDataset, Dataset, EncodedDataset
from nfnet.data.loader import Loader, epoch_permutation, eval_batches, steps_per_epoch, total_steps
from nfnet.data.sources import SOURCES, load_dataset
from nfnet.data.transforms import MEAN, STD, normalise_on_device

__all__ = [
    "ArrayDataset",
    "Dataset",
    "EncodedDataset",
    "Loader",
    "MEAN",
    "SOURCES",
    "STD",
    "epoch_permutation",
    "eval_batches",
    "load_dataset",
    "normalise_on_device",
    "steps_per_epoch",
    "total_steps",
]
