"""``python -m softfactory_obs``: the command line (see ``softfactory_obs.cli``)."""

from .cli import main

raise SystemExit(main())
