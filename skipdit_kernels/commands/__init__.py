"""One module per ``skipdit`` subcommand, each with ``configure(parser)`` and ``run(args)``."""
