import sys

from polyvis.cli import main

sys.exit(main())
