"""Table-driven tests of RunIncrement: declared vs. learned steps per run."""

import pytest

from hooks import RunIncrement

# (declared, events, expected estimate after all events). Events are
# ("stale", s) or ("real", stale, real) or ("new_session",).
CASES = [
    ("correct declaration stays", 10,
     [("stale", 0), ("real", 0, 10), ("stale", 10), ("stale", 20)], 10),
    ("shortened last loop does not lower it", 10,
     [("stale", 0), ("real", 0, 10), ("stale", 10), ("real", 20, 25)], 10),
    ("learned from the real read", 1, [("real", 0, 100)], 100),
    ("learned from stale differences", 1,
     [("stale", 0), ("stale", 100), ("stale", 200)], 100),
    ("largest increment wins", 1,
     [("stale", 0), ("stale", 5), ("stale", 50), ("stale", 55)], 45),
    ("no learning across sessions", 1,
     [("stale", 0), ("new_session",), ("stale", 1000)], 1),
    ("step going back is ignored", 4,
     [("stale", 100), ("stale", 20), ("real", 50, 40)], 4),
]


@pytest.mark.parametrize("name,declared,events,expected", CASES,
                         ids=[c[0] for c in CASES])
def test_estimate_table(name, declared, events, expected):
  del name
  increment = RunIncrement(declared)
  for event in events:
    if event[0] == "stale":
      increment.observe_stale(event[1])
    elif event[0] == "real":
      increment.observe_real(event[1], event[2])
    else:
      increment.new_session()
  assert increment.estimate() == expected
  assert increment.declared == declared


def test_needs_real_step_once_per_session():
  increment = RunIncrement(3)
  assert increment.needs_real_step
  increment.observe_real(0, 3)
  assert not increment.needs_real_step
  increment.new_session()
  assert increment.needs_real_step
  assert increment.observed == 3  # What was learned is kept.


@pytest.mark.parametrize("value,error", [(0, ValueError), (-1, ValueError),
                                         (2.0, TypeError), (None, TypeError),
                                         (False, TypeError)])
def test_bad_declared(value, error):
  with pytest.raises(error, match=r"`iterations_per_loop` \("):
    RunIncrement(value, name="iterations_per_loop")
