"""`python -m imgsim_client.cli`: the same as `imgsim-client`."""

import sys

from imgsim_client.cli import main

sys.exit(main())
