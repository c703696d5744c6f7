"""`python -m edgepack`: the same as the `edgepack` command."""

from .cli import run

if __name__ == "__main__":
    run()
