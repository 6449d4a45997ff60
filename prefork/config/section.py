"""Settings sections: how the framework and applications declare their configuration keys.

A section is a class; each field is one key with its default (a string, parsed like any other value), a
parser (prefork.config.parsers) and a one-line meaning. The framework's own sections are in
prefork.config.framework; apps declare theirs with the same classes, imported from prefork.settings.
Instances are frozen dataclasses (and dataclasses to a type checker: a mistyped key is a type error).
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

if sys.version_info >= (3, 11):
    from typing import dataclass_transform
else:  # Python 3.10: type checkers then see plain classes

    def dataclass_transform(**kwargs: Any) -> Callable[[Any], Any]:
        return lambda cls: cls


# A section name is one lowercase word, so that PREFORK_<SECTION>_<KEY> splits in one way only.
SECTION_NAME = re.compile(r"[a-z][a-z0-9]*")
KEY_NAME = re.compile(r"[a-z][a-z0-9_]*")

Parser = Callable[[str], Any]


@dataclass(frozen=True)
class Setting:
    """One configuration key: where it lives, its default (as a string), how to parse it, its help."""

    section: str
    key: str
    default: str
    parse: Parser  # raw string -> value; raises ValueError (DSNError for pool.dsn)
    help: str
    flag: str | None = None  # long command-line flag, e.g. "--bind"

    @property
    def name(self) -> str:
        """``section.key``, e.g. ``server.bind``."""
        return f"{self.section}.{self.key}"


_OPTION = "prefork.option"


def option(default: str, parse: Parser, help: str, *, flag: str | None = None) -> Any:
    """One key of a Section: ``default`` is the raw string (parsed at declaration: a bad default fails at
    import, not in a worker), ``help`` one line, ``flag`` an optional long command-line flag."""
    if flag is not None and not re.fullmatch(r"--[a-z][a-z0-9-]*", flag):
        raise ValueError(f"bad flag {flag!r}: expected --lowercase-words")
    value = parse(default)  # a ValueError here is a bug in the declaration
    meta = {_OPTION: (default, parse, help, flag)}
    # A factory, not a default: a list value must not be shared between instances.
    return dataclasses.field(default_factory=lambda: value, metadata=meta)


S = TypeVar("S", bound="Section")


@dataclass_transform(frozen_default=True, field_specifiers=(option,))
class Section:
    """Base of a settings section: ``class MySettings(Section, name="mysection")``; fields use option()."""

    section_name: ClassVar[str]
    _settings: ClassVar[tuple[Setting, ...]]

    def __init_subclass__(cls, name: str, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not SECTION_NAME.fullmatch(name):
            raise ValueError(f"bad section name {name!r}: expected one lowercase word (letters, digits)")
        cls.section_name = name
        dataclass(frozen=True)(cls)
        found = []
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if _OPTION not in f.metadata:
                raise TypeError(f"{cls.__name__}.{f.name}: declare it with option(default, parse, help)")
            if not KEY_NAME.fullmatch(f.name):
                raise ValueError(f"{cls.__name__}.{f.name}: a key is lowercase letters, digits and _")
            default, parse, help_text, flag = f.metadata[_OPTION]
            found.append(Setting(name, f.name, default, parse, help_text, flag))
        cls._settings = tuple(found)

    @classmethod
    def settings(cls) -> tuple[Setting, ...]:
        """The section's keys, in declaration order."""
        return cls._settings


def sections_of(declared: Any) -> tuple[type[Section], ...]:
    """An app's ``settings`` attribute as a tuple of Section classes: one class, a sequence, or None."""
    if declared is None:
        return ()
    items: Iterable[Any] = (declared,) if isinstance(declared, type) else declared
    result = tuple(items)
    for item in result:
        if not (isinstance(item, type) and issubclass(item, Section)):
            raise TypeError(f"settings must be Section classes, not {item!r}")
    return result
