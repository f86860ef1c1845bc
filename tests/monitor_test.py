"""Early stopping and the overfitting alarm."""

from jaxtune import monitor


def test_early_stopping_patience_and_min_delta():
  es = monitor.EarlyStopping("min", patience=2, min_delta=0.1)
  assert not es.update(1, 1.0)
  assert not es.update(2, 0.95)  # improves by less than min_delta: a bad evaluation
  assert not es.update(3, 0.8)  # real improvement resets the count
  assert es.best_step == 3
  assert not es.update(4, 0.85)
  assert es.update(5, float("nan"))  # a non-finite value never improves
  restored = monitor.EarlyStopping("min", patience=2, min_delta=0.1)
  restored.load(es.state())
  assert restored.state() == es.state()


def test_early_stopping_max_mode_and_off():
  es = monitor.EarlyStopping("max", patience=1)
  assert not es.update(1, 0.5)
  assert es.update(2, 0.5)
  off = monitor.EarlyStopping("max", patience=0)
  assert not any(off.update(i, 0.1) for i in range(10))


def test_overfit_alarm_needs_k_consecutive_divergences():
  alarm = monitor.OverfitAlarm(k=2)
  assert not alarm.update(2.0, 1.0)
  assert not alarm.update(1.5, 1.1)
  assert alarm.update(1.0, 1.2)
  assert "train loss fell 2.0000 -> 1.0000" in alarm.message(30)
  assert not alarm.update(0.9, 1.1)  # eval loss fell again: no alarm
  assert not monitor.OverfitAlarm(k=0).update(1.0, 2.0)
