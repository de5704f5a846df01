"""`python -m protege.generate -c FILE [--set k=v] [--dry-run]`."""

from protege.generate.stage import main

raise SystemExit(main())
