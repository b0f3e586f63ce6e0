import sys

from dakd_core.cli import main

sys.exit(main())
