"""Every scenario: a further converge in check mode reports no change.

Molecule's idempotence step proves a second real run changes nothing; this proves the
roles also run in --check on a converged host and predict no change there either.
"""

from stack_testinfra import converge


def test_check_mode_reports_no_change():
    run = converge("--check", "--diff")
    assert run.returncode == 0, run.output[-6000:]
    assert run.changed, f"no play recap found:\n{run.output[-4000:]}"
    assert not run.any_changed, f"check mode predicts changes {run.changed}:\n{run.output[-6000:]}"
