"""Echo, after an import that takes $TESTAPP_IMPORT_SECONDS (green sleep: the worker is patched by then)."""

import os
import time

time.sleep(float(os.environ.get("TESTAPP_IMPORT_SECONDS", "0")))


class Echo:
    def handle(self, line: str, client) -> str:
        return line


app = Echo()
