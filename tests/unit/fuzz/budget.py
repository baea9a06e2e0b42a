"""The fuzzing budget shared by every fuzz target in this folder.

CI runs each target with a short budget; `scripts/fuzz` raises it (OPPY_FUZZ_EXAMPLES) for a long hunt.
Every target feeds outside bytes to one parser or state machine and asserts that it answers with its own
error type, never another exception, and that a rejected input leaves no half-made state behind.
"""

import os

from hypothesis import HealthCheck, settings

FUZZ_EXAMPLES = int(os.environ.get("OPPY_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                       HealthCheck.data_too_large])
