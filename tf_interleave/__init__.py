"""tf_interleave: a fast, robust parallel interleave for `tf.data`.

```python
import tf_interleave

records = files.apply(tf_interleave.parallel_interleave(
    tf.data.TFRecordDataset, cycle_length=8, sloppy=True))
```

Importing this package registers the `TfInterleave>ParallelInterleaveDataset`
op; processes that run a serialized pipeline using it (tf.data service
workers, a loaded SavedModel) must import it too.
"""

from tf_interleave._loader import library_path
from tf_interleave.dataset import ParallelInterleaveDataset
from tf_interleave.interleave import parallel_interleave
from tf_interleave.stats import stats

__version__ = "0.1.0"

__all__ = [
    "ParallelInterleaveDataset", "library_path", "parallel_interleave", "stats"
]
