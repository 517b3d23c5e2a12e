"""fsseg's command line: a Typer app, one command per pipeline stage.

Nothing here imports torch or numpy at module level, so `fsseg --help` is instant; each
command imports its stage inside the function.
"""
