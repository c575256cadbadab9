"""`python -m fedattack` and the `fedattack` console script: the command line
(fedattack.cli), where Ctrl-C while it starts (importing torch and Flower takes seconds) is one
line and exit code 130, as it is once the command runs."""

import sys


def entry() -> None:
    try:
        from fedattack import cli
    except KeyboardInterrupt:
        print("fedattack: interrupted", file=sys.stderr)
        sys.exit(130)
    cli.entry()


if __name__ == "__main__":
    entry()
