import threading
import time
from concurrent.futures import ThreadPoolExecutor

from histoseg_cli.core.parallel import ordered_map


def test_ordered_map_keeps_order_and_bounds_read_ahead():
    started = []
    lock = threading.Lock()

    def work(i: int) -> int:
        with lock:
            started.append(i)
        time.sleep(0.001 * (5 - i % 5))  # later items finish first
        return i * i

    with ThreadPoolExecutor(4) as pool:
        results = ordered_map(pool, work, range(40), ahead=3)
        assert next(results) == 0
        time.sleep(0.05)  # a slow consumer: the pool must not run ahead of it
        assert len(started) <= 4
        assert list(results) == [i * i for i in range(1, 40)]
