from para.cli import main

raise SystemExit(main())
