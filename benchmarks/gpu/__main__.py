"""``python benchmarks/gpu --device cuda|cpu [--small] [--out FILE.json] [--nvidia DIR]``."""

import sys
from pathlib import Path

# the sections import each other as ``gpu.*`` from benchmarks/; this folder itself leaves the
# path, so none of its modules shadows an installed one
here = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
sys.path.insert(0, str(here.parent))

from gpu.main import main  # noqa: E402

sys.exit(main())
