from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # mypy holds the bundled apps to the application interface (make lint): one line per optional member
    # an app has, each an error naming the member if its signature drifts from prefork.interface.
    from prefork import interface as api
    from workers import echo, ingest, lookup, syslog

    _e1: api.App = echo.app
    _e2: api.HandlesLines = echo.app

    _l1: api.App = lookup.app
    _l2: api.HasSetup = lookup.app
    _l3: api.HasClose = lookup.app
    _l4: api.HasStats = lookup.app
    _l5: api.HasCheck = lookup.app
    _l6: api.HasInitdb = lookup.app
    _l7: api.HasSettings = lookup.app

    _i1: api.App = ingest.app
    _i2: api.HandlesLines = ingest.app
    _i3: api.AcceptsLineIds = ingest.app
    _i4: api.HasSetup = ingest.app
    _i5: api.HasClose = ingest.app
    _i6: api.HasStats = ingest.app
    _i7: api.HasCheck = ingest.app
    _i8: api.HasInitdb = ingest.app
    _i9: api.HasSettings = ingest.app
    _i10: api.HasReadiness = ingest.app

    _s1: api.App = syslog.app
    _s2: api.HandlesLines = syslog.app
    _s3: api.AcceptsLineIds = syslog.app
    _s4: api.HasSetup = syslog.app
    _s5: api.HasClose = syslog.app
    _s6: api.HasStats = syslog.app
    _s7: api.HasCheck = syslog.app
    _s8: api.HasInitdb = syslog.app
    _s9: api.HasSettings = syslog.app
    _s10: api.HasReadiness = syslog.app
