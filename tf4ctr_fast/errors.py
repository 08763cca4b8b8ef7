"""The one exception type for bad user input, and the one for a multi-process run that lost a rank.

Their messages always name where the problem is (file and line, config key, run folder), so the CLI
can print them as-is without a traceback.
"""


class InputError(ValueError):
    """Bad user input: a missing file, a malformed row, an unknown config key."""


class RankLost(RuntimeError):
    """A multi-process run stopped because one of its ranks died or became unreachable; the message
    names the run's last checkpoint and the resume command."""


def torch_load_reason(e: Exception) -> str:
    """Why torch.load(weights_only=True) refused a file, in a line. Torch's own message advises
    loading with weights_only=False, which runs any code the file holds: that advice is left out."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        detail = " ".join(text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0].split())
        return (f"it holds more than tensors and plain values ({detail}), and checkpoints are loaded "
                "without running code from the file")
    return f"{type(e).__name__}: {text.strip().splitlines()[0] if text.strip() else 'unreadable'}"
