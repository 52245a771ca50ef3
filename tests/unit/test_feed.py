"""data/feed.DeviceFeed: batches one jitted call ahead, a checkpoint state of the batches consumed."""

import numpy as np

from codex_jax.data.feed import DeviceFeed
from codex_jax.data.iterators import make_train_iterator

ROWS = np.arange(40 * 9, dtype=np.int32).reshape(40, 9)


def _feed(per_call=1):
    return DeviceFeed(make_train_iterator(ROWS, batch_size=4, seed=1), np.asarray, per_call)


def test_state_counts_the_batches_taken_not_the_one_held_ahead():
    feed, plain = _feed(), make_train_iterator(ROWS, batch_size=4, seed=1)
    for _ in range(3):
        np.testing.assert_array_equal(next(feed), next(plain))
        feed.fill()
    assert feed.get_state() == plain.get_state() == {"next_index": 3}
    assert feed.source.get_state() == {"next_index": 4}  # the fourth is read and held


def test_resume_from_its_state_continues_with_the_same_batches():
    feed = _feed(per_call=2)
    for _ in range(2):
        next(feed)
        feed.fill()
    state, rest = feed.get_state(), [next(feed) for _ in range(3)]
    assert state == {"next_index": 4} and rest[0].shape == (2, 4, 9)  # two micro-batches stacked
    resumed = _feed(per_call=2)
    next(resumed)
    resumed.fill()
    resumed.set_state(state)  # drops the batch held ahead
    for want in rest:
        np.testing.assert_array_equal(next(resumed), want)
