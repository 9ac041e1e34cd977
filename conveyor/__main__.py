from conveyor.ops.cli import main

raise SystemExit(main())
