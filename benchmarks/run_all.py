"""Run every ``bench_*.py`` script in this folder, one after the other (``make bench``).

``--quick`` shortens the long ones (``bench_imagenet.py``: K = 1, 10, 100 instead of up to 1000, about 2 minutes
instead of 10 on 2 cores).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

QUICK = {"bench_imagenet.py": ["--ks", "1,10,100"]}

if __name__ == "__main__":
    quick = "--quick" in sys.argv[1:]
    failed = []
    for script in sorted(Path(__file__).parent.glob("bench_*.py")):
        print(f"== {script.name}", flush=True)
        extra = QUICK.get(script.name, []) if quick else []
        if subprocess.run([sys.executable, str(script), *extra], check=False).returncode:
            failed.append(script.name)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")
