"""`python -m ratelimit_service` is the `ratelimit-service` command."""

from ratelimit_service.cli import main

raise SystemExit(main())
