import sys

from xtuner_assistant.cli.main import main

sys.exit(main())
