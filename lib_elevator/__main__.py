import sys

from lib_elevator.cli import main

sys.exit(main())
