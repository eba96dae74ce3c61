from samsbench.cli import main

raise SystemExit(main())
