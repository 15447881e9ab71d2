"""`python -m imgsim_client`."""

import sys

from imgsim_client.cli import main

sys.exit(main())
