from heron.runtime.native import main

raise SystemExit(main())
