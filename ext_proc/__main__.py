"""``python -m ext_proc``: the ext_proc process (ext_proc/server.py)."""

import sys

from ext_proc.server import main

sys.exit(main())
