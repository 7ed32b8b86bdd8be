"""The ``trainjob`` command line (entry point ``trainjob.cli.main:main``)."""
