from gateway.interactions.cli import main

raise SystemExit(main())
