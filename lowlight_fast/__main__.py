"""``python -m lowlight_fast`` runs the ``lowlight-fast`` command."""
import sys

from lowlight_fast.cli import main

sys.exit(main())
