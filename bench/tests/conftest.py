import sys
from pathlib import Path

# The runner's modules import as `benchkit` and `run`, as bench/run.py sees them.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
