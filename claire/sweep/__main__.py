"""`python -m claire.sweep sweeps/<study>`: a sweep's summary and plots again, from its study alone."""

from claire.sweep.summary import main

raise SystemExit(main())
