from oppy.cli import main

raise SystemExit(main())
