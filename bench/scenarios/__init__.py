"""Scenario workers that no driver covers (run as ``python -m bench.scenarios.<name>``)."""
