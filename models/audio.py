"""Audio constants of heron's speech models, named once (numpy-free, torch-free: the data engine, the
front end and the exporters all import them; the runtime reads them from each bundle's manifest)."""

SAMPLE_RATE = 16000  # Hz: what every model hears and the data engine writes
N_FFT = 400  # 25 ms analysis window
HOP = 160  # 10 ms between feature frames
CONTEXT = N_FFT - HOP  # samples of the previous chunk that a streaming chunk needs
N_BINS = N_FFT // 2 + 1  # STFT bins
