"""A deterministic simulation of the whole pipe (issue 10): ``python -m tests.sim.run``."""
