import sys

from authz_service.cli import main

sys.exit(main())
