"""How many answers 500 in a row a call alone must get before the sender takes it for one
the server fails on (engine/sender/_delivery.py, ``attempts_to_blame``)."""

import sys

from engine.sender._delivery import POISON_ATTEMPTS, attempts_to_blame


def test_a_server_that_answers_others_well_blames_a_call_after_a_few_and_a_flaky_one_later():
    assert attempts_to_blame(0.0) == attempts_to_blame(0.02) == POISON_ATTEMPTS == 4
    assert attempts_to_blame(0.1) == 6  # a run of 6 at 10 %: one in a million
    assert attempts_to_blame(0.5) == 20
    assert attempts_to_blame(0.95) == sys.maxsize  # nearly everything fails: an outage
    rates = [i / 100 for i in range(90)]
    needed = [attempts_to_blame(rate) for rate in rates]
    assert needed == sorted(needed)  # never fewer where more requests fail
    assert all(rate ** n <= 1e-6 * (1 + 1e-9) for rate, n in zip(rates, needed, strict=True))
