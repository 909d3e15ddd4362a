"""One progress and metric writer for every long loop: training, extraction,
evaluation and re-ranking.

``Progress`` logs ``name: done/total unit, rate, ETA`` at most every
``every_s`` seconds, with the rate smoothed (an exponential moving average over
the logged intervals), so the ETA does not jump; plain lines, no escape codes,
so a redirected log stays readable. ``MetricWriter`` writes TensorBoard scalars
(tensorboardX, no TensorFlow) from process 0. No configs.
"""

from __future__ import annotations

import time
from typing import Callable, Mapping

from absl import logging
import jax


class MetricWriter:
  """TensorBoard scalars from process 0 (a no-op elsewhere, or without a logdir)."""

  def __init__(self, logdir: str | None):
    self._writer = None
    if logdir and jax.process_index() == 0:
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        self._writer = SummaryWriter(logdir)
      except ImportError:
        logging.warning("tensorboardX is not installed: no TensorBoard scalars")

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    if self._writer is not None:
      for k, v in values.items():
        self._writer.add_scalar(k, float(v), step)
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


class Progress:
  """Rate and ETA of a loop of ``total`` units, logged every ``every_s`` seconds.

  Usage::

    progress = Progress("extract query", total=n, unit="images")
    for ...:
      progress.update(done)         # logs when due
    progress.finish()               # logs the total time and mean rate

  Attributes:
    rate: smoothed units per second (None before the first interval).
    logged: whether ``update`` has logged (a short loop may finish without a line and
      then need no closing one either).
  """

  def __init__(self, name: str, total: int, unit: str = "steps", every_s: float = 10.0,
               smoothing: float = 0.3, log: Callable[..., None] | None = None,
               start: int = 0):
    self.name, self.total, self.unit = name, int(total), unit
    self.every_s, self.smoothing = every_s, smoothing
    self._log = log or logging.info
    self._start = self._last_time = time.time()
    self._first = self._last_done = int(start)
    self.rate: float | None = None
    self.logged = False

  def eta_s(self, done: int) -> float:
    return (self.total - done) / self.rate if self.rate else float("nan")

  def update(self, done: int, extra: str = "", force: bool = False) -> bool:
    """Records that ``done`` units are finished; logs if ``every_s`` passed (or ``force``).

    Returns True when it logged.
    """
    now = time.time()
    if not force and now - self._last_time < self.every_s:
      return False
    if done > self._last_done and now > self._last_time:
      instant = (done - self._last_done) / (now - self._last_time)
      self.rate = instant if self.rate is None else (
          self.smoothing * instant + (1 - self.smoothing) * self.rate)
    self._last_time, self._last_done = now, done
    rate = f"{_rate(self.rate)} {self.unit}/s" if self.rate else "rate n/a"
    self._log("%s: %d/%d %s, %s, ETA %s%s", self.name, done, self.total, self.unit, rate,
              _duration(self.eta_s(done)), f"  {extra}" if extra else "")
    self.logged = True
    return True

  def finish(self, extra: str = "") -> float:
    """Logs the total time and the mean rate; returns the seconds spent."""
    spent = time.time() - self._start
    done = self.total - self._first
    self._log("%s: %d %s in %.1f s (%s %s/s)%s", self.name, done, self.unit, spent,
              _rate(done / max(spent, 1e-9)), self.unit, f"  {extra}" if extra else "")
    return spent


def _rate(per_s: float) -> str:
  """A rate with one decimal, or three significant digits below 1 (0.0238, not 0.0)."""
  return f"{per_s:.1f}" if per_s >= 1 else f"{per_s:.3g}"


def _duration(seconds: float) -> str:
  """``"43 s"``; from two minutes on with hours and minutes too: ``"18481 s (5 h 8 min)"``."""
  if not seconds == seconds:  # nan: no rate yet
    return "n/a"
  text = f"{seconds:.0f} s"
  if seconds >= 120:
    minutes = int(round(seconds / 60))
    text += f" ({minutes // 60} h {minutes % 60} min)" if minutes >= 60 else f" ({minutes} min)"
  return text
