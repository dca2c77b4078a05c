"""The local executor works one item ahead in a thread: results in the items' order, the
worker only ever called from one thread one item at a time, an error raised where the caller
reads, and nothing more started once the caller stops reading."""

from __future__ import annotations

import threading
import time

import pytest

from blackbox_xai.dataset.executor import LocalExecutor
from blackbox_xai.errors import BlackboxError


def make_worker(calls: list, fail_at: int | None = None, delay: float = 0.0):
    def worker(item: int) -> int:
        calls.append((item, threading.get_ident()))
        time.sleep(delay * (item % 2))  # odd items finish later: order must not depend on it
        if item == fail_at:
            raise BlackboxError(f"item {item} is bad")
        return item * 10

    return lambda: worker


def test_results_come_in_the_items_order_from_one_worker_thread():
    calls: list = []
    assert list(LocalExecutor().map(make_worker(calls, delay=0.01), range(6))) == [
        0, 10, 20, 30, 40, 50]
    assert [c[0] for c in calls] == list(range(6))
    assert len({c[1] for c in calls}) == 1 and calls[0][1] != threading.get_ident()


def test_an_error_reaches_the_reader_after_the_results_before_it():
    calls: list = []
    stream = LocalExecutor().map(make_worker(calls, fail_at=2), range(5))
    assert [next(stream), next(stream)] == [0, 10]
    with pytest.raises(BlackboxError, match="item 2 is bad"):
        next(stream)


def test_a_reader_that_stops_leaves_at_most_one_item_more_worked_on():
    calls: list = []
    stream = LocalExecutor().map(make_worker(calls), range(10))
    assert [next(stream), next(stream)] == [0, 10]
    stream.close()
    assert len(calls) <= 3  # the two read and the one ahead
