"""One module per ``rmrrd`` subcommand: ``register(subparsers)`` and ``run(args) -> int``."""
