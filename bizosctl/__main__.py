from __future__ import annotations

from bizosctl.cli.main import main

main()
