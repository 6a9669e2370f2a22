"""CLI subcommands beyond run/sample/eval/plugins: each module exposes ``register(subparsers)``."""
