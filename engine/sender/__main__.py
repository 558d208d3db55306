from engine.sender._process import main

raise SystemExit(main())
