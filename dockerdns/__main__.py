"""`python -m dockerdns`: the same as the `dockerdns` command."""

import sys

from .cli import main

sys.exit(main())
