import sys

from converterctl.cli import main

sys.exit(main())
