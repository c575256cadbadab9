import sys

from fedattack.cli import main

sys.exit(main())
