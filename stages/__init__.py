"""fsseg's engine: one module per pipeline stage, shared code in `core` and `models`.

Nothing here imports the CLI, rich or typer; stages talk to each other through files.
"""

__version__ = "0.3.0"
