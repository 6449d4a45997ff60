"""An app whose import calls sys.exit with a message: the worker can never boot."""

import sys

sys.exit("exit_at_import refuses to start")
