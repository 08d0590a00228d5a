"""``python -m ketasim``: the same command line as the ``ketasim`` script."""

from .cli import entry

if __name__ == "__main__":
    entry()
