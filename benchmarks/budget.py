"""The CPU-time training budget the accuracy benchmarks share.

The budget is CPU time of this process (user + system, all threads), not wall time, because the 2 cores of the
benchmark machine are shared with other jobs: 600 CPU-s is 5 minutes of both cores whatever else runs. Training
stops at the end of the first batch after the budget.
"""
import os
import time

import keras


def cpu_seconds():
    times = os.times()
    return times.user + times.system


class CPUBudget(keras.callbacks.Callback):
    """Stops `fit` at the end of the first batch after `seconds` of process CPU time, counted from the end of the
    first step (which traces and compiles the train function: a fixed cost, not training). Records each later
    step's wall duration in `step_times` (seconds)."""

    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds
        self.start = None
        self.step_times = []
        self._last = None

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if self._last is not None:
            self.step_times.append(now - self._last)
        self._last = now
        if self.start is None:
            self.start = cpu_seconds()
        elif cpu_seconds() - self.start >= self.seconds:
            self.model.stop_training = True
