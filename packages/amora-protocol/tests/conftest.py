"""Hypothesis settings for a shared 2-core CI machine: no per-example deadline, no slowness check.

Generation speed depends on what else the machine runs; what the property tests check does not.
"""

from hypothesis import HealthCheck, settings

settings.register_profile("amora", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("amora")
