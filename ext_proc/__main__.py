import sys

from ext_proc.server import main

sys.exit(main())
