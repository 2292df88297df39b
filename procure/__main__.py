"""``python -m procure ...`` (and ``accelerate launch -m procure run RECIPE``) = the ``procure`` command."""

from procure.cli import main

raise SystemExit(main())
