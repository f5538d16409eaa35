"""Speech data engine: TTS voices, vocabulary, pairs, augmentation, streams (numpy; no torch)."""
