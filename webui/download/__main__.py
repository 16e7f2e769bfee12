"""`python -m webui.download`: the command line of `webui.download.cli`."""

import sys

from webui.download.cli import main

sys.exit(main())
