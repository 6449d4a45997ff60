"""An app whose import crashes the interpreter (SIGSEGV): the worker can never boot."""

import ctypes

ctypes.string_at(0)
