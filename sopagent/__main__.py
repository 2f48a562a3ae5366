"""``python -m sopagent``: the ``sopagent`` command."""

from sopagent.cli import main

if __name__ == "__main__":
    main()
