"""The step's statistics into detectron2's EventStorage, without making the step wait for the device."""
import concurrent.futures
from typing import Sequence

from torch import Tensor

__all__ = ["put_scalars_in_background", "wait_for_background_scalars"]

_BACKGROUND_WRITER = None


def put_scalars_in_background(storage, names: Sequence[str], values: Tensor) -> None:
    """
    Put the values of a device tensor into detectron2's EventStorage, under the current iteration, without
    making the training step wait for them: `put_scalar` converts with float(), which on a GPU waits for every
    queued kernel. A background thread does the reading, as detectron2's SimpleTrainer(async_write_metrics=True)
    does for the losses; the step goes on launching kernels meanwhile.
    """
    global _BACKGROUND_WRITER
    if _BACKGROUND_WRITER is None:
        _BACKGROUND_WRITER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mg_metrics")
    iteration = storage.iter
    values = values.detach()

    def put():
        for name, value in zip(names, values.tolist()):
            storage.put_scalar(name, value, cur_iter=iteration)

    _BACKGROUND_WRITER.submit(put)


def wait_for_background_scalars() -> None:
    """Returns once every value handed to `put_scalars_in_background` so far is in its EventStorage."""
    if _BACKGROUND_WRITER is not None:
        _BACKGROUND_WRITER.submit(lambda: None).result()
