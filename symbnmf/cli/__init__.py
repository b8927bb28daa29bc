"""Stage 7 — cli: the ``symbnmf`` command (entry point ``symbnmf.cli.main:main``), one module per
subcommand (NAME, HELP, add_arguments, run), imported only when its command runs.
May import: everything below it; nothing outside this package imports it."""
