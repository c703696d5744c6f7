"""`python -m edgepack`: the same as the `edgepack` command."""

from .cli import main

if __name__ == "__main__":
    main()
