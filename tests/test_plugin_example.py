"""docs/plugin.md's example, run as written (in a subprocess: it registers an encoder, which would
otherwise leak into the other tests' encoder lists)."""
import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugin.md"


def test_the_docs_example_runs():
    (code,) = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(code.strip().splitlines()) <= 40
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=DOC.parents[1])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "torch.Size([2]) True"
