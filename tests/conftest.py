import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REAL_SPEECH = SHARED / "data" / "real_speech"


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Tests write TTS audio into a throwaway cache, never the user's."""
    os.environ["HERON_CACHE"] = str(tmp_path_factory.mktemp("heron-cache"))
    yield


needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng not installed (apt-get install espeak-ng)")
needs_real_speech = pytest.mark.skipif(not REAL_SPEECH.is_dir(),
                                       reason=f"real speech data not found at {REAL_SPEECH}")
