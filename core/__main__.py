"""`python -m stylefu.core ...` is the `stylefu` command (the GIMP plug-ins' worker uses it)."""

from .cli.main import main

raise SystemExit(main())
