"""The driver's leak sweeper (saeception.sweep.leaks) as a Tune callback: which controllers it watches and
when it looks. Killing and removing on a real Ray: tests/system/test_reliability_on_ray.py."""

from types import SimpleNamespace

import saeception.sweep.leaks as leaks
from saeception.sweep.vocab import TRAIN_CONTROLLER


def test_a_trial_that_ends_hands_its_reported_controller_to_the_sweeper(monkeypatch):
    """Each trial's results name its Train controller (the relay adds it); when Tune ends the trial (done,
    errored or stopped by a scheduler: on_trial_complete), that controller starts its grace; a trial that never
    reported has nothing to watch. Every end looks at once."""
    looks = []
    monkeypatch.setattr(leaks, "kill_outlived_controllers", lambda ended, now: looks.append(dict(ended)) or [])
    monkeypatch.setattr(leaks, "remove_orphaned_placement_groups", lambda: 0)
    sweeper = leaks.sweeper_callback()
    a, b, c = (SimpleNamespace(trial_id=t) for t in "abc")
    sweeper.on_trial_result(0, [a, b], a, {"cycle": 0, TRAIN_CONTROLLER: "c0a"})
    sweeper.on_trial_result(0, [a, b], b, {"cycle": 0, TRAIN_CONTROLLER: "c0b"})
    sweeper.on_trial_result(0, [a, b], a, {"cycle": 1})  # a result without the field keeps the known one
    sweeper.on_trial_complete(0, [a, b], a)
    assert set(looks[-1]) == {"c0a"} and sweeper.controllers == {"b": "c0b"}
    sweeper.on_trial_error(0, [b, c], b)
    sweeper.on_trial_complete(0, [c], c)
    assert set(looks[-1]) == {"c0a", "c0b"} and len(looks) == 3 and sweeper.controllers == {}
