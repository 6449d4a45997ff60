"""Echo, after an import that takes $TESTAPP_IMPORT_SECONDS (green sleep: the worker is patched by then).
With $TESTAPP_IMPORT_STARTED, the importer first appends its pid to that file (a test knows it is importing).
"""

import os
import time

if os.environ.get("TESTAPP_IMPORT_STARTED"):
    with open(os.environ["TESTAPP_IMPORT_STARTED"], "a") as started:
        started.write(f"{os.getpid()}\n")
time.sleep(float(os.environ.get("TESTAPP_IMPORT_SECONDS", "0")))


class Echo:
    def handle(self, line: str, client) -> str:
        return line


app = Echo()
