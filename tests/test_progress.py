"""The one progress logger: a smoothed rate, so the ETA does not jump."""

import pytest

from jreid import progress


def test_rate_is_smoothed_and_eta_follows_it(monkeypatch):
  clock = iter([0.0, 10.0, 20.0, 30.0, 40.0])
  monkeypatch.setattr(progress.time, "time", lambda: next(clock))
  logged = []
  meter = progress.Progress("work", total=1000, unit="items", every_s=5.0, smoothing=0.3,
                            log=lambda fmt, *a: logged.append(fmt % a))
  meter.update(100)                 # t=10: 10 items/s
  assert meter.rate == pytest.approx(10.0)
  meter.update(400)                 # t=20: 30 items/s now -> 0.3 * 30 + 0.7 * 10
  assert meter.rate == pytest.approx(16.0)
  meter.update(450)                 # t=30: 5 items/s now -> 0.3 * 5 + 0.7 * 16
  assert meter.rate == pytest.approx(12.7)
  assert meter.eta_s(450) == pytest.approx(550 / 12.7)
  assert logged[-1] == "work: 450/1000 items, 12.7 items/s, ETA 43 s"
  assert all("\x1b" not in line and "\r" not in line for line in logged)


def test_slow_work_shows_its_rate_and_an_eta_in_hours(monkeypatch):
  # One row tile in 42 s out of 440: the rate keeps three digits, the ETA gains h and min.
  clock = iter([0.0, 42.0, 43.0])
  monkeypatch.setattr(progress.time, "time", lambda: next(clock))
  logged = []
  meter = progress.Progress("rerank", total=440, unit="row tiles", every_s=0.0,
                            log=lambda fmt, *a: logged.append(fmt % a))
  meter.update(1)
  assert logged[-1] == "rerank: 1/440 row tiles, 0.0238 row tiles/s, ETA 18438 s (5 h 7 min)"
  meter.total = 3
  meter.update(1, force=True)  # no new units: the rate holds, 2 left at 1/42 per s
  assert logged[-1] == "rerank: 1/3 row tiles, 0.0238 row tiles/s, ETA 84 s"


def test_updates_within_the_interval_are_not_logged(monkeypatch):
  clock = iter([0.0, 1.0, 2.0, 12.0])
  monkeypatch.setattr(progress.time, "time", lambda: next(clock))
  logged = []
  meter = progress.Progress("work", total=10, every_s=10.0, log=lambda *a: logged.append(a))
  assert not meter.update(1)
  assert not meter.update(2) and not meter.logged
  assert meter.update(3) and meter.logged
  assert len(logged) == 1
