"""heron's small language models: a compact decoder-only transformer with dense or MoE FFNs, the
project's byte-level BPE tokenizer and default corpus, dial-k (MoE-PHDS) training, Roster-of-Experts
routing, DynaMoE conversion and Hugging Face checkpoint loading (Mixtral, OLMoE, Qwen2-MoE)."""
