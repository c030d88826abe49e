"""Data: where a source is (sources), its splits, tokenising and loaders (tasks), the Hugging Face reader (hf) and what data is accepted (checks)."""
