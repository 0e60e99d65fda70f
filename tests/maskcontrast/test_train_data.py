"""The training data pipeline: the batch sampler that runs across epochs."""

from maskcontrast.data.views import EpochBatchSampler
from maskcontrast.train_data import RunningBatchSampler


def test_running_batch_sampler_continues_epoch_after_epoch():
    inner = EpochBatchSampler(10, 3, seed=1)
    expected = []
    for e in range(3):
        inner.set_epoch(e)
        expected += list(inner)
    running = RunningBatchSampler(EpochBatchSampler(10, 3, seed=1))
    it = iter(running)
    assert [next(it) for _ in range(9)] == expected
    running.start_at(1, 2)  # mid-epoch resume
    it = iter(running)
    assert [next(it) for _ in range(4)] == expected[5:9]
