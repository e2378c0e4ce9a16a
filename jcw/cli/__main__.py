import sys

from jcw.cli.main import main

sys.exit(main())
