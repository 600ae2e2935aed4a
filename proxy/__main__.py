"""`python -m proxy` is `rollout`."""

import sys

from proxy.control.cli import main

sys.exit(main())
