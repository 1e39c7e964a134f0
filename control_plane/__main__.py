import sys

from control_plane.server import main

sys.exit(main())
