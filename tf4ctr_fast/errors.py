"""The one exception type for bad user input.

Its message always names where the problem is (file and line, or config key), so the CLI can print
it as-is without a traceback.
"""


class InputError(ValueError):
    """Bad user input: a missing file, a malformed row, an unknown config key."""
