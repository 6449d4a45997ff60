"""Configuration: the one place that turns strings into settings, and the app's settings into checked values.

Every setting has a built-in default, and a value from a later source replaces one from an earlier one:

    built-in defaults < INI file (``-c FILE``) < environment ``PREFORK_<SECTION>_<KEY>`` < command line

so ``PREFORK_POOL_MAX_SIZE=20`` beats ``max_size = 5`` in the file's ``[pool]``, and ``--pool-max 30`` (or
``-s pool.max_size=30``) beats both. Every value from every source is validated, even one that a later
source replaces: a bad file is reported now, not on the first run without the override. Unknown sections,
keys and ``PREFORK_SERVER_*`` / ``PREFORK_POOL_*`` variables are errors, not warnings, so a typo never
silently leaves a default in force.

The framework owns ``[server]`` and ``[pool]`` (ServerConfig, PoolConfig). Every other section belongs to
the application, which declares it (prefork.settings): the master never imports the app, so a Config
keeps those values as raw strings, in the order of their sources, and ``check_sections()`` validates
them once the app's sections are known (the probe does that in a forked child for the master).
``PREFORK_<SECTION>_*`` variables of a section the app does not declare are ignored, as are other
``PREFORK_*`` variables.

Errors are ConfigError: one line naming the key and the bad value. The database password never appears
in an error message or in ``Config.as_dict()``. SIGHUP calls ``Config.reload()``: the file is read again,
while the environment and the command line stay as they were given at start.

The modules, each importing only those above it:

- ``errors``: ConfigError and its "did you mean" hint.
- ``address``: ``HOST:PORT``, ``[IPv6]:PORT`` and ``unix:PATH``, parsed and written.
- ``section``: the Section/option mechanism; ``parsers``: value parsers (apps get both from prefork.settings).
- ``framework``: ``[server]`` and ``[pool]``.
- ``sources``: the file and the environment; values kept with their source.
- ``flags``: the command line: the framework's flags, ``-s``, APP, and the app's flags.
- ``loader``: ``load_config()`` and ``Config``.
- ``appload``: importing the app that ``server.app`` names (workers, probe and one-shot commands).
- ``appsections``: the config checked against the app's sections once it is imported (``load_settled()``).
- ``probe``: the forked child that settles the config for the master, which never imports the app.

This package imports none of its modules: a module that needs an address (the client, the DSN) imports
``prefork.config.address`` without pulling in the rest.
"""
